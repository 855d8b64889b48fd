"""The customer-service assistant: the decision rules, the example program on tiny models,
and the same answers through `zerolm serve --assistant` (POST /v1/assist) and the joint
model's route (POST /v1/intent_slots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_helpers import live

from zerolm.assistant import Assistant, AssistantSettings, compose
from zerolm.serve import ServeSettings, create_app

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "assistant" / "assistant.py"
UTTERANCES = ["what is the weather in ashby cross tomorrow", "play some jazz by miles davis",
              "how do i reset my password"]


# joint_dir, oos_dir and faq_index: tests/serve/conftest.py

PARSE = {"intent": "atis_flight", "intent_score": 0.9, "slots": [{"type": "fromloc.city_name", "text": "boston",
                                                                   "start": 14, "end": 20, "words": [3, 3]}]}


def hit(score, intent=None, answer="A"):
    return {"score": score, "question": "Q", "answer": answer, "intent": intent}


def test_out_of_scope_says_it_cannot_help():
    out = compose("book me a dentist", PARSE, {"in_scope": False, "oos_score": 0.8}, [hit(0.9)])
    assert out["in_scope"] is False and out["faq"] is None and "can't help" in out["reply"]
    # without an out-of-scope model, a low intent probability is out of scope
    low = compose("hmm", {**PARSE, "intent_score": 0.3}, None, [], AssistantSettings(min_intent_score=0.5))
    # unsure of the intent, but the FAQ answers: served, named by the FAQ entry
    faq = compose("x", {**PARSE, "intent_score": 0.3}, {"in_scope": True}, [hit(0.7, "lost_luggage", "desk")])
    assert faq["in_scope"] and faq["faq"]["answer"] == "desk" and "lost_luggage (from the FAQ)" in faq["reply"]
    # the out-of-scope model says in scope, but the joint model is unsure and no FAQ answers
    assert compose("x", {**PARSE, "intent_score": 0.3}, {"in_scope": True}, [])["in_scope"] is False
    assert low["in_scope"] is False and low["oos_score"] == pytest.approx(0.7)


def test_the_faq_answers_past_its_threshold_lower_for_the_predicted_intent():
    s = AssistantSettings(min_faq_score=0.6, min_faq_score_same_intent=0.4)
    assert compose("x", PARSE, None, [hit(0.7, answer="top")], s)["faq"]["answer"] == "top"
    assert compose("x", PARSE, None, [hit(0.5, answer="weak")], s)["faq"] is None
    # an entry of the predicted intent wins at a lower score, over a better-scoring stranger
    both = [hit(0.55, "atis_meal", "stranger"), hit(0.45, "atis_flight", "same intent")]
    out = compose("x", PARSE, None, both, s)
    assert out["faq"]["answer"] == "same intent"
    assert "fromloc.city_name: boston" in out["reply"] and "same intent" in out["reply"]


def test_the_example_program_runs_on_tiny_models(joint_dir, oos_dir, faq_index):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--joint", str(joint_dir), "--oos", str(oos_dir),
                           "--index", str(faq_index), "--json", *UTTERANCES], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["text"] for a in answers] == UTTERANCES
    for a in answers:
        assert isinstance(a["in_scope"], bool) and a["reply"] and a["intent"]
        for slot in a["slots"]:
            assert a["text"][slot["start"]:slot["end"]] == slot["text"]
    plain = subprocess.run([sys.executable, str(EXAMPLE), "--joint", str(joint_dir)], input=UTTERANCES[0] + "\n",
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0 and plain.stdout.startswith(f"> {UTTERANCES[0]}\n"), plain.stderr


def test_serve_assist_and_intent_slots_equal_the_library(joint_dir, oos_dir, faq_index):
    import zerolm

    joint, oos = zerolm.load(joint_dir), zerolm.load(oos_dir)
    want = Assistant(joint, oos=oos, index=faq_index).answer(UTTERANCES)
    settings = ServeSettings(assistant=("slu", "oos"), faq_index=str(faq_index))
    with live(create_app({"slu": joint, "oos": oos}, settings)) as url:
        r = httpx.post(url + "/v1/assist", json={"input": UTTERANCES}, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["data"]
        for g, w in zip(got, want):
            assert g["reply"] == w["reply"] and g["in_scope"] == w["in_scope"] and g["intent"] == w["intent"]
            assert (g["faq"] or {}).get("answer") == (w["faq"] or {}).get("answer")
        r = httpx.post(url + "/v1/intent_slots", json={"model": "slu", "input": UTTERANCES[:2]}, timeout=60)
        assert r.status_code == 200, r.text
        lib = joint.predict(UTTERANCES[:2])
        for g, w in zip(r.json()["data"], lib):
            assert g["intent"] == w["intent"] and g["tags"] == w["tags"] and g["slots"] == w["slots"]
        r = httpx.post(url + "/v1/classify", json={"model": "oos", "input": "open a savings account"}, timeout=60)
        assert set(r.json()["data"][0]) >= {"in_scope", "oos_score", "top_label"}
        models = httpx.get(url + "/v1/models").json()
        assert models["assistant"] == {"joint": "slu", "oos": "oos", "faq_index": str(faq_index)}
        assert {m["id"]: m["kind"] for m in models["data"]} == {"slu": "intent_slots", "oos": "classify"}


def test_assistant_settings_are_checked(joint_dir, oos_dir, classifier_dir):
    import zerolm
    from zerolm.errors import ZeroLMError

    joint, clf = zerolm.load(joint_dir), zerolm.load(classifier_dir)
    with pytest.raises(ZeroLMError, match="not among the served models"):
        create_app({"slu": joint}, ServeSettings(assistant=("nope", None)))
    with pytest.raises(ZeroLMError, match="no out-of-scope detection"):
        create_app({"slu": joint, "clf": clf}, ServeSettings(assistant=("slu", "clf")))
    with live(create_app({"slu": joint})) as url:
        r = httpx.post(url + "/v1/assist", json={"input": "hello"})
        assert r.status_code == 404 and "--assistant" in r.json()["error"]["message"]
