"""zerolm serve with an encoder-decoder (T5): /v1/generate writes the target the library
writes, decoding as the model was fine-tuned unless the request says otherwise (beams,
length penalty, ...); streams add up (a beam search's too); an over-long source is cut
and said so; beam search asked of a causal LM is a 422 naming the field."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import live

import zerolm
from zerolm.serve import ServeSettings, create_app

SOURCES = ["A man is eating in the snow.", "Two dogs play in the park.", "A woman reads a book."]


@pytest.fixture(scope="module")
def t5(tiny_run):
    return zerolm.load(tiny_run("seq2seq_translate.yaml", "train.max_steps=40") / "best")


@pytest.fixture(scope="module")
def url(t5, predictors):
    with live(create_app({"t5": t5, "gpt": predictors["gpt"]}, ServeSettings(max_wait_ms=20))) as u:
        yield u


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/generate", json=body, timeout=60)


def stream(url: str, body: dict) -> tuple[list[str], list[dict]]:
    pieces, finals = [], []
    with httpx.stream("POST", url + "/v1/generate", timeout=60, json={**body, "stream": True}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                pieces.append(event["text"])
                if "finish_reason" in event:
                    finals.append(event)
    return pieces, finals


def test_the_model_is_listed_as_a_generator_with_its_decoding(url):
    m = next(m for m in httpx.get(url + "/v1/models").json()["data"] if m["id"] == "t5")
    assert m["kind"] == "generate" and m["routes"] == ["/v1/generate"] and m["family"] == "t5"
    assert m["decoding"] == {"num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
                             "max_new_tokens": 32, "greedy": True}
    assert m["max_length"] == 32  # the fine-tuned source length (data.max_length)


@pytest.mark.parametrize("opts", [{}, {"num_beams": 3, "length_penalty": 0.6},
                                  {"num_beams": 2, "no_repeat_ngram_size": 2, "max_new_tokens": 9},
                                  {"min_new_tokens": 4, "max_new_tokens": 12}])
def test_targets_equal_the_library(url, t5, opts):
    r = post(url, {"model": "t5", "input": SOURCES, **opts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["text"] for d in data] == t5.generate(SOURCES, **opts)
    assert all(d["finish_reason"] in ("stop", "length") and d["truncated"] is False for d in data)
    assert all(0 < d["tokens"] <= opts.get("max_new_tokens", 32) for d in data)
    if "min_new_tokens" in opts:
        assert all(d["tokens"] >= 4 for d in data)


def test_sampling_options_sample_with_one_beam(t5):
    assert t5.generation_config(temperature=0.7).num_beams == 1
    t5.set_decoding(num_beams=3)  # fine-tuned with beams: sampling still takes one
    try:
        assert t5.generation_config().num_beams == 3 and t5.generation_config(top_k=5).num_beams == 1
    finally:
        t5.set_decoding(num_beams=1)


def test_sampling_with_a_seed_is_repeatable(url):
    body = {"model": "t5", "input": SOURCES[0], "temperature": 0.9, "seed": 7, "max_new_tokens": 10}
    first, again = post(url, body).json()["data"][0], post(url, body).json()["data"][0]
    assert first == again and 0 < first["tokens"] <= 10


@pytest.mark.parametrize("opts", [{}, {"num_beams": 3}])
def test_the_stream_adds_up_to_the_plain_answer(url, opts):
    plain = post(url, {"model": "t5", "input": SOURCES[1], **opts}).json()["data"][0]
    pieces, finals = stream(url, {"model": "t5", "input": SOURCES[1], **opts})
    assert len(finals) == 1 and finals[0]["finish_reason"] == plain["finish_reason"]
    assert "".join(pieces) == plain["text"] and finals[0]["tokens"] == plain["tokens"]
    assert finals[0]["truncated"] is False


def test_an_over_long_source_is_cut_and_said_so(url, t5):
    long = " ".join(["A man is eating in the snow."] * 20)
    r = post(url, {"model": "t5", "input": [long, SOURCES[0]]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["truncated"] for d in data] == [True, False]
    assert data[0]["text"] == t5.generate([long])[0]  # the library cuts it the same way


def test_causal_lm_answers_keep_their_shape_and_refuse_beams(url):
    r = post(url, {"model": "gpt", "input": "ROMEO:", "max_new_tokens": 4, "greedy": True})
    assert r.status_code == 200 and "truncated" not in r.json()["data"][0]
    r = post(url, {"model": "gpt", "input": "ROMEO:", "num_beams": 3})
    assert r.status_code == 422 and r.json()["error"]["field"] == "num_beams"
    assert "encoder-decoders" in r.json()["error"]["message"]


def test_bad_decoding_settings_are_422_naming_the_field(url):
    r = post(url, {"model": "t5", "input": "a", "num_beams": 0})
    assert r.status_code == 422 and r.json()["error"]["field"] == "num_beams"
    r = post(url, {"model": "t5", "input": "a", "num_beams": 9})  # over the server's limit (8)
    assert r.status_code == 422 and "limit of 8" in r.json()["error"]["message"]
    r = post(url, {"model": "t5", "input": "a", "num_beams": 3, "temperature": 0.7})
    assert r.status_code == 422 and "does not sample" in r.json()["error"]["message"]
    r = post(url, {"model": "t5", "input": "a", "max_new_tokens": 100000})
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


def test_a_lower_server_limit_caps_the_models_own_target_length(t5):
    with live(create_app({"t5": t5}, ServeSettings(max_wait_ms=5, max_new_tokens=5))) as u:
        card = httpx.get(u + "/v1/models").json()["data"][0]
        assert card["decoding"]["max_new_tokens"] == 5  # what a silent request gets here
        r = post(u, {"input": SOURCES[0]})
        assert r.status_code == 200 and r.json()["data"][0]["tokens"] <= 5
        assert r.json()["data"][0]["text"] == t5.generate([SOURCES[0]], max_new_tokens=5)[0]
