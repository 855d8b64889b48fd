"""Fuzzing the HTTP layer: whatever body a client sends to any POST route (random JSON,
wrong types, missing or unknown fields, empty, huge, unicode or lone-surrogate texts, odd
generation options, broken JSON), the server answers below 500, and every answer other
than 200 is the documented error `{"error": {"message", "type", "code"}}` with code equal
to the status. (bench/serve_load.py runs the same kind of fuzz with many more examples.)"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import live

from zerolm.serve import ServeSettings, create_app

ROUTES = ("/v1/classify", "/v1/tag", "/v1/generate", "/v1/embeddings")
MODELS = ("clf", "ner", "gpt")
MAX_BODY = 20_000  # small, so that huge texts meet the 413 path without megabytes per example
MAX_NEW_TOKENS = 8  # short generations keep the examples fast

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)  # valid as a JSON escape, not encodable as UTF-8
TEXT = st.one_of(
    st.text(min_size=1, max_size=30),  # any unicode (blank included)
    st.text(st.characters() | SURROGATE, min_size=1, max_size=8),
    st.sampled_from(["", " ", "\t\n", "\u200b", "\x00", "[CLS] [SEP] [PAD] [MASK] [UNK]", "a gripping film",
                     "<|endoftext|>", "\U0001f600" * 3]),
    st.integers(0, 2 * MAX_BODY).map(lambda n: "great film " * (n // 11)),  # over the model's length / the body
)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
TEXTS = TEXT | st.lists(TEXT, min_size=1, max_size=4)
GENERATE = {  # the options of /v1/generate, of the right type: usual values, and odd ones (nan, inf, huge)
    "temperature": st.floats(0, 2) | st.floats(), "top_k": st.integers(0, 50) | st.integers(),
    "top_p": st.floats(0, 1) | st.floats(), "repetition_penalty": st.floats(0.5, 2) | st.floats(),
    "greedy": st.booleans(), "stop": TEXTS, "seed": st.none() | st.integers(0, 2**32) | st.integers(),
    "stream": st.booleans(),
}
EMBEDDINGS = {"encoding_format": st.sampled_from(["float", "base64", "int8"]),
              "dimensions": st.none() | st.sampled_from([32, 384]) | st.integers(), "user": st.none() | TEXT}
OPTIONS = {"/v1/generate": GENERATE, "/v1/embeddings": EMBEDDINGS}
# given in every well-formed generation body: the default (32) is over the test server's limit
REQUIRED = {"/v1/generate": {"max_new_tokens": st.integers(-1, MAX_NEW_TOKENS + 2)}}
FIELDS = ["model", "input", "max_new_tokens", *GENERATE, *EMBEDDINGS, "inputs", ""]
ROUTE_MODEL = {"/v1/classify": "clf", "/v1/tag": "ner", "/v1/generate": "gpt", "/v1/embeddings": "clf"}
RAW = st.sampled_from([b"", b"{", b'{"input": "a"', b'{"input": "a"}}', b"\xff\xfe{}", b"null", b"[]", b"NaN",
                       b'{"input": "\\ud800"}', b'{"input": "a", "input": 3}']) | st.binary(max_size=40)


def bodies(route: str, models=MODELS, route_model=ROUTE_MODEL) -> st.SearchStrategy[tuple[str | None, bytes]]:
    """(content type, body bytes) of a request to `route`: well-formed bodies of the route
    (the right model or another, odd option values), the same with one field set to any JSON
    value, objects of any fields, any JSON value, and bytes that may not be JSON at all."""
    valid = st.fixed_dictionaries({"model": st.just(route_model[route]) | st.sampled_from(models), "input": TEXTS,
                                   **REQUIRED.get(route, {})}, optional=OPTIONS.get(route, {}))
    spoilt = st.tuples(valid, st.sampled_from(FIELDS) | st.text(max_size=8), JSON).map(
        lambda t: {**t[0], t[1]: t[2]})
    odd = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON | TEXTS, max_size=4)
    as_json = st.one_of(valid, valid, spoilt, odd, JSON).map(lambda b: ("application/json", json.dumps(b).encode()))
    return as_json | st.tuples(st.sampled_from(["application/json", "text/plain", None]), RAW)


def check(route: str, r: httpx.Response) -> None:
    """No 5xx; a 200 is a whole answer; anything else is the error shape with code == status."""
    assert r.status_code < 500, f"{route} answered {r.status_code}: {r.text[:1000]}"
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            errors = [e for e in events if "error" in e]
            assert not errors, f"{route} streamed errors: {errors}"
            assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
        else:
            assert isinstance(r.json()["data"], list), r.text[:300]
        return
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"], r.text
    assert isinstance(err["type"], str) and err["type"], r.text
    assert err["code"] == r.status_code, r.text


@pytest.fixture(scope="module")
def client(predictors):
    # no batching wait (each example is answered at once), short generations, and a small
    # body limit, so that a few hundred examples take seconds
    s = ServeSettings(max_wait_ms=0, max_new_tokens=MAX_NEW_TOKENS, max_body=MAX_BODY, max_inputs=3, timeout_s=30)
    with live(create_app(predictors, s)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


@settings(max_examples=400, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=st.fixed_dictionaries({route: bodies(route) for route in ROUTES}))
def test_no_body_gets_a_5xx_and_every_error_has_its_shape(client, cases):
    for route, (content_type, content) in cases.items():
        headers = {"content-type": content_type} if content_type else {}
        check(route, client.post(route, content=content, headers=headers))


# odd values at the edges of what the model code takes, sent every run (the fuzz may miss them)
EDGES = [
    ("/v1/classify", {"model": "clf", "input": "a lone surrogate \ud800"}),
    ("/v1/embeddings", {"model": "clf", "input": ["fine", "\udfff"]}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "temperature": 1e-40}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "temperature": 1e-300, "stream": True}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "repetition_penalty": 1e-300}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "seed": 2**64}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "top_k": 2**70, "top_p": 5e-324}),
    ("/v1/generate", {"model": "gpt", "input": "long " * 2000, "max_new_tokens": 2}),
]


@pytest.mark.parametrize("route, body", EDGES)
def test_edge_values_are_answered_below_500(client, route, body):
    check(route, client.post(route, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


def test_the_server_still_serves_after_the_fuzz(client):
    r = client.post("/v1/classify", json={"model": "clf", "input": ["a gripping film", "dull"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    metrics = client.get("/metrics").text
    fives = [ln for ln in metrics.splitlines() if ln.startswith("zerolm_requests_total") and 'status="5' in ln]
    assert not fives, fives
