"""Fixtures of the compression tests: tiny models (hidden 32, odd widths) and one tiny
fine-tuned classifier, trained once per session in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import SequenceClassifier

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"


def _tiny_model(family: str = "bert", **over) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=32,
                      dropout=0.0, attn_dropout=0.0, **over)
    base = build_model(cfg)
    model = SequenceClassifier(base, 3) if family == "bert" else base
    return model.eval()


@pytest.fixture
def tiny_model():
    """make(family="bert", **config) -> a small classifier (bert: 3 classes) or causal LM
    (gpt) without dropout, in eval mode; hidden 32, d_ff 37 (odd: catches shape bugs)."""
    return _tiny_model


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(1, 99, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> Path:
    """best/ of a tiny sentiment classifier fine-tuned on the shipped reviews."""
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    out = tmp_path_factory.mktemp("classifier") / "run"
    finetune(load_config(TINY / "classify_reviews.yaml", [f"out_dir={out}", "train.epochs=1",
                                                          "train.progress=false"], cls=FinetuneConfig))
    return out / "best"
