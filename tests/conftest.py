import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path | None:
    env = os.environ.get("ZEROLM_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture
def data_root() -> Path:
    p = shared_data()
    if p is None:
        pytest.skip("shared datasets not found: set ZEROLM_DATA to the shared/data folder")
    return p


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own token cache and a fixed small thread count."""
    monkeypatch.setenv("ZEROLM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`tiny_run("classify_reviews.yaml", "train.epochs=2")`: the run directory of a shipped
    tiny recipe (configs/tiny) trained once per session for each set of overrides, shared
    by every test that asks for the same one. Tests read it; they never write into it."""
    runs: dict[tuple[str, tuple[str, ...]], Path] = {}

    def run(config: str, *overrides: str) -> Path:
        key = (config, overrides)
        if key not in runs:
            from zerolm.config import FinetuneConfig, load_config
            from zerolm.train.finetune import finetune
            from zerolm.train.pretrain import pretrain

            out = tmp_path_factory.mktemp(Path(config).stem) / "run"
            cfg = load_config(REPO / "configs" / "tiny" / config,
                              [f"out_dir={out}", "train.progress=false", *overrides])
            finetune(cfg) if isinstance(cfg, FinetuneConfig) else pretrain(cfg)
            runs[key] = out
        return runs[key]

    return run
