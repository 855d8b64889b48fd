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
