"""Tiny served models (the shipped tiny recipes, trained once per session)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="zerolm serve needs the serve extra (fastapi, uvicorn)")


@pytest.fixture(scope="session")
def classifier_dir(tiny_run):
    return tiny_run("classify_reviews.yaml", "train.epochs=2") / "best"


@pytest.fixture(scope="session")
def tagger_dir(tiny_run):
    return tiny_run("tag_ner.yaml", "task.crf=true", "train.epochs=3") / "best"


@pytest.fixture(scope="session")
def gpt_dir(tiny_run):
    return tiny_run("gpt_char.yaml") / "final"


@pytest.fixture(scope="session")
def predictors(classifier_dir, tagger_dir, gpt_dir):
    import zerolm

    return {"clf": zerolm.load(classifier_dir), "ner": zerolm.load(tagger_dir), "gpt": zerolm.load(gpt_dir)}

