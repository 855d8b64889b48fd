"""Fixtures of the compression tests: tiny models (hidden 32, odd widths) and one tiny
fine-tuned classifier, trained once per session in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import SequenceClassifier


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
def classifier(tiny_run) -> Path:
    """best/ of a tiny sentiment classifier fine-tuned on the shipped reviews."""
    return tiny_run("classify_reviews.yaml", "train.epochs=1") / "best"
