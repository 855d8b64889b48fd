"""Tiny served models (the shipped tiny recipes, trained once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="zerolm serve needs the serve extra (fastapi, uvicorn)")

FAQ = Path(__file__).resolve().parents[2] / "examples" / "assistant" / "faq.jsonl"


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



# ---- the assistant's parts (tests/serve/test_assistant.py, test_page.py)


@pytest.fixture(scope="session")
def joint_dir(tiny_run):
    return tiny_run("intent_slots.yaml") / "best"


@pytest.fixture(scope="session")
def oos_dir(tiny_run):
    return tiny_run("classify_intents_oos.yaml") / "best"


@pytest.fixture(scope="session")
def faq_index(classifier_dir, tmp_path_factory):
    from zerolm.index import build_index

    out = tmp_path_factory.mktemp("faq") / "index"
    build_index(classifier_dir, FAQ, out)  # any encoder embeds; the tiny classifier's body here
    return out
