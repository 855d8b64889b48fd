"""Fixtures of the export tests: a tiny classifier, CRF tagger and char GPT trained once
per session from the shipped tiny recipes (seconds each), and their ONNX exports.
The tests skip, saying why, where onnx or onnxruntime is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> Path:
    """best/ of a tiny sentiment classifier fine-tuned on the shipped reviews."""
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    out = tmp_path_factory.mktemp("classifier") / "run"
    finetune(load_config(TINY / "classify_reviews.yaml", [f"out_dir={out}", "train.epochs=2",
                                                          "train.progress=false"], cls=FinetuneConfig))
    return out / "best"


@pytest.fixture(scope="session")
def tagger(tmp_path_factory) -> Path:
    """best/ of a tiny NER tagger with a CRF, fine-tuned on the shipped CoNLL files."""
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train.finetune import finetune

    out = tmp_path_factory.mktemp("tagger") / "run"
    finetune(load_config(TINY / "tag_ner.yaml", [f"out_dir={out}", "task.crf=true", "train.epochs=3",
                                                 "train.progress=false"], cls=FinetuneConfig))
    return out / "best"


@pytest.fixture(scope="session")
def char_gpt(tmp_path_factory) -> Path:
    """final/ of the tiny char-level GPT pretrained for 20 steps on the shipped corpus."""
    from zerolm.config import load_config
    from zerolm.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("gpt") / "run"
    pretrain(load_config(TINY / "gpt_char.yaml", [f"out_dir={out}", "train.progress=false"]))
    return out / "final"


def _export(model_dir: Path, out: Path, **kw) -> Path:
    import zerolm
    from zerolm.export import export_onnx

    pred = zerolm.load(model_dir)
    export_onnx(pred.model, out, tokenizer=pred.tokenizer, meta=pred.meta, source=str(model_dir), **kw)
    return out


@pytest.fixture(scope="session")
def classifier_onnx(classifier, tmp_path_factory) -> Path:
    return _export(classifier, tmp_path_factory.mktemp("onnx") / "classifier", int8=True)


@pytest.fixture(scope="session")
def tagger_onnx(tagger, tmp_path_factory) -> Path:
    return _export(tagger, tmp_path_factory.mktemp("onnx") / "tagger")


@pytest.fixture(scope="session")
def gpt_onnx(char_gpt, tmp_path_factory) -> Path:
    return _export(char_gpt, tmp_path_factory.mktemp("onnx") / "gpt")
