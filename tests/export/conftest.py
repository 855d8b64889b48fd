"""Fixtures of the export tests: a tiny classifier, CRF tagger and char GPT trained once
per session from the shipped tiny recipes (seconds each), and their ONNX exports.
The tests skip, saying why, where onnx or onnxruntime is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def classifier(tiny_run) -> Path:
    """best/ of a tiny sentiment classifier fine-tuned on the shipped reviews."""
    return tiny_run("classify_reviews.yaml", "train.epochs=2") / "best"


@pytest.fixture(scope="session")
def tagger(tiny_run) -> Path:
    """best/ of a tiny NER tagger with a CRF, fine-tuned on the shipped CoNLL files."""
    return tiny_run("tag_ner.yaml", "task.crf=true", "train.epochs=3") / "best"


@pytest.fixture(scope="session")
def char_gpt(tiny_run) -> Path:
    """final/ of the tiny char-level GPT pretrained for 20 steps on the shipped corpus."""
    return tiny_run("gpt_char.yaml") / "final"


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
