"""zerolm serve: every route's answer equals the library's, every error has its code and
message, batches form and fail alone, streams add up to the plain answer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from serve_helpers import free_port, live

from zerolm.serve import ServeSettings, create_app

TEXTS = ["a wonderful, moving film", "dull and far too long", "the plot was fine"]


@pytest.fixture(scope="module")
def url(predictors):
    with live(create_app(predictors, ServeSettings(max_wait_ms=20))) as u:
        yield u


def post(url: str, route: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + route, json=body, timeout=30, **kw)
    return httpx.post(url + route, content=body, headers={"content-type": "application/json"}, timeout=30, **kw)


def error_of(r: httpx.Response) -> dict:
    return r.json()["error"]


# ------------------------------------------------------------------ happy paths
def test_models_health_ready_docs_and_page(url):
    models = httpx.get(url + "/v1/models").json()["data"]
    kinds = {m["id"]: m["kind"] for m in models}
    assert kinds == {"clf": "classify", "ner": "tag", "gpt": "generate"}
    clf = next(m for m in models if m["id"] == "clf")
    assert clf["routes"] == ["/v1/classify", "/v1/embeddings"] and clf["labels"]
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json()["status"] == "ready"
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/v1/classify", "/v1/tag", "/v1/generate", "/v1/embeddings", "/v1/models"} <= set(schema["paths"])
    assert httpx.get(url + "/docs").status_code == 200
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_classify_equals_the_library(url, predictors):
    r = post(url, "/v1/classify", {"model": "clf", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predictors["clf"].predict(TEXTS)
    assert [d["label"] for d in body["data"]] == [w["label"] for w in want]
    for d, w in zip(body["data"], want):
        assert d["probs"] == pytest.approx(w["probs"], abs=1e-6)
        assert d["truncated"] is False
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] > 0
    one = post(url, "/v1/classify", {"model": "clf", "input": TEXTS[0]}).json()["data"]
    assert len(one) == 1 and one[0]["label"] == want[0]["label"]


def test_tag_equals_the_library_with_offsets(url, predictors):
    text = "John Smith visited Paris with Mary in May ."
    r = post(url, "/v1/tag", {"model": "ner", "input": [text]})
    assert r.status_code == 200, r.text
    got = r.json()["data"][0]
    want = predictors["ner"].predict([text])[0]
    assert got["tags"] == want["tags"] and got["tokens"] == want["tokens"]
    assert got["entities"] == want["entities"]
    for e in got["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]


def test_embeddings_openai_shape_float_and_base64(url, predictors):
    r = post(url, "/v1/embeddings", {"model": "clf", "input": TEXTS[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "clf"
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    want = predictors["clf"].embed(TEXTS[:2])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-6)
    b64 = post(url, "/v1/embeddings", {"model": "clf", "input": TEXTS[0], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, want[0], atol=1e-6)
    bad = post(url, "/v1/embeddings", {"model": "clf", "input": "x", "dimensions": 3})
    assert bad.status_code == 422 and error_of(bad)["field"] == "dimensions"


def test_generate_equals_the_library_and_the_stream_adds_up(url, predictors):
    opts = {"max_new_tokens": 24, "greedy": True}
    r = post(url, "/v1/generate", {"model": "gpt", "input": ["ROMEO:", "To be"], **opts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["text"] for d in data] == predictors["gpt"].generate(["ROMEO:", "To be"], **opts)
    assert all(d["finish_reason"] in ("stop", "length") and d["tokens"] > 0 for d in data)
    pieces, finals, done = [], [], False
    with httpx.stream("POST", url + "/v1/generate", timeout=30,
                      json={"model": "gpt", "input": "ROMEO:", "stream": True, **opts}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            pieces.append(event["text"])
            if "finish_reason" in event:
                finals.append(event)
    assert done and len(finals) == 1
    assert len(pieces) > 2  # it streamed, rather than sending everything at the end
    assert "".join(pieces) == data[0]["text"]


def test_truncation_is_reported(url, predictors):
    long = " ".join(["wonderful"] * 500)
    r = post(url, "/v1/classify", {"model": "clf", "input": [long, "fine"]})
    assert r.status_code == 200
    assert [d["truncated"] for d in r.json()["data"]] == [True, False]
    assert r.json()["data"][0]["label"] == predictors["clf"].predict([long])[0]["label"]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("body, field, words", [
    ('{"model": "clf"}', "input", "required"),
    ('{"model": "clf", "input": ""}', "input", "empty"),
    ('{"model": "clf", "input": []}', "input", "no text"),
    ('{"model": "clf", "input": ["ok", "  "]}', "input", "text 1"),
    ('{"model": "clf", "input": 5}', "input", "a text or a list"),
    ('{"model": "clf", "input": ["ok", 3]}', "input[1]", "string"),
    ('{"model": "clf", "input": "a", "inptu": 1}', "inptu", "unknown field"),
    ('{"model": "clf", "input": ', "body", "JSON"),
    ('{"input": "a"}', "model", "several models"),
])
def test_malformed_input_is_422_naming_the_field(url, body, field, words):
    r = post(url, "/v1/classify", body)
    assert r.status_code == 422, r.text
    e = error_of(r)
    assert e["field"] == field and words in e["message"] and e["code"] == 422


def test_generation_options_are_checked(url):
    r = post(url, "/v1/generate", {"model": "gpt", "input": "a", "temperature": -1})
    assert r.status_code == 422 and error_of(r)["field"] == "temperature"
    r = post(url, "/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 100000})
    assert r.status_code == 422 and "limit" in error_of(r)["message"]


def test_unknown_model_404_and_wrong_route_400(url):
    r = post(url, "/v1/classify", {"model": "nope", "input": "a"})
    assert r.status_code == 404 and "clf" in error_of(r)["message"]
    r = post(url, "/v1/tag", {"model": "clf", "input": "a"})
    assert r.status_code == 400 and "/v1/classify" in error_of(r)["message"]
    assert httpx.get(url + "/v2/nothing").status_code == 404


def test_body_over_the_limit_is_413(predictors):
    with live(create_app({"clf": predictors["clf"]}, ServeSettings(max_body=200))) as u:
        r = post(u, "/v1/classify", {"input": "x" * 500})
        assert r.status_code == 413 and "limit of 200 bytes" in error_of(r)["message"]

        def chunks():  # no Content-Length: the limit holds while the body is read
            yield b'{"input": "'
            yield b"y" * 400
            yield b'"}'
        r = httpx.post(u + "/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert post(u, "/v1/classify", {"input": "fine"}).status_code == 200


def test_over_long_input_without_truncation_is_422(predictors):
    with live(create_app({"clf": predictors["clf"]}, ServeSettings(truncate=False))) as u:
        r = post(u, "/v1/classify", {"input": ["ok", " ".join(["word"] * 500)]})
        assert r.status_code == 422 and error_of(r)["field"] == "input[1]" and "tokens" in error_of(r)["message"]


def test_too_many_texts_is_422(predictors):
    with live(create_app({"clf": predictors["clf"]}, ServeSettings(max_inputs=2))) as u:
        r = post(u, "/v1/classify", {"input": ["a", "b", "c"]})
        assert r.status_code == 422 and "more than the 2" in error_of(r)["message"]


def test_api_key(predictors):
    with live(create_app({"clf": predictors["clf"]}, ServeSettings(api_key="s3cret"))) as u:
        assert httpx.get(u + "/healthz").status_code == 200
        assert httpx.get(u + "/").status_code == 200  # the page itself holds no data
        for path in ("/v1/models", "/metrics", "/readyz", "/docs"):
            r = httpx.get(u + path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = post(u, "/v1/classify", {"input": "a"})
        assert r.status_code == 401 and "Bearer" in error_of(r)["message"]
        wrong = post(u, "/v1/classify", {"input": "a"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = post(u, "/v1/classify", {"input": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_cors_only_when_asked(predictors):
    origin = {"Origin": "http://example.test"}
    with live(create_app({"clf": predictors["clf"]})) as u:
        assert "access-control-allow-origin" not in httpx.get(u + "/v1/models", headers=origin).headers
    with live(create_app({"clf": predictors["clf"]}, ServeSettings(cors=("http://example.test",)))) as u:
        r = httpx.get(u + "/v1/models", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"


def slowed(app, name: str, seconds: float, fail_on: str | None = None):
    """Make model `name`'s batches take `seconds` (and raise for a batch holding `fail_on`)."""
    ep = app.state.server.endpoints[name]
    inner = ep.run_batch

    def run_batch(group, items):
        time.sleep(seconds)
        if fail_on is not None and any(it.payload == fail_on for it in items):
            raise RuntimeError("boom")
        return inner(group, items)
    ep.run_batch = run_batch
    return app


async def _gather(u: str, bodies: list[dict], route: str = "/v1/classify") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=u, timeout=30) as c:
        return await asyncio.gather(*(c.post(route, json=b) for b in bodies))


def test_full_queue_is_429_with_retry_after(predictors):
    app = slowed(create_app({"clf": predictors["clf"]}, ServeSettings(max_queue=2, max_batch_size=1)), "clf", 0.3)
    with live(app) as u:
        rs = asyncio.run(_gather(u, [{"input": f"text {i}"} for i in range(8)]))
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    busy = next(r for r in rs if r.status_code == 429)
    assert int(busy.headers["retry-after"]) >= 1 and "queue is full" in error_of(busy)["message"]


def test_timeout_is_504(predictors):
    app = slowed(create_app({"clf": predictors["clf"]}, ServeSettings(timeout_s=0.2)), "clf", 0.6)
    with live(app) as u:
        r = post(u, "/v1/classify", {"input": "slow"})
        assert r.status_code == 504 and "within 0.2 s" in error_of(r)["message"]


def test_a_failing_batch_fails_only_its_requests(predictors):
    app = slowed(create_app({"clf": predictors["clf"]}, ServeSettings(max_batch_size=1)), "clf", 0.0,
                 fail_on="poison")
    with live(app) as u:
        bodies = [{"input": "fine one"}, {"input": "poison"}, {"input": "fine two"}]
        rs = asyncio.run(_gather(u, bodies))
        assert [r.status_code for r in rs] == [200, 500, 200]
        assert "boom" in error_of(rs[1])["message"]
        assert post(u, "/v1/classify", {"input": "still serving"}).status_code == 200


def test_requests_batch_together_and_a_malformed_one_fails_alone(predictors):
    app = create_app({"clf": predictors["clf"]}, ServeSettings(max_wait_ms=200, max_batch_size=16))
    sizes = []
    ep = app.state.server.endpoints["clf"]
    inner = ep.run_batch
    ep.run_batch = lambda group, items: (sizes.append(len(items)), inner(group, items))[1]
    with live(app) as u:
        bodies = [{"input": t} for t in TEXTS * 3] + [{"input": ""}]
        rs = asyncio.run(_gather(u, bodies))
        want = predictors["clf"].predict(TEXTS * 3)
        assert [r.status_code for r in rs] == [200] * 9 + [422]
        assert [r.json()["data"][0]["label"] for r in rs[:9]] == [w["label"] for w in want]
        assert max(sizes) > 1, sizes  # concurrent requests shared a batch
        metrics = httpx.get(u + "/metrics").text
    assert 'zerolm_requests_total{route="/v1/classify",status="200"} 9.0' in metrics
    assert 'zerolm_requests_total{route="/v1/classify",status="422"} 1.0' in metrics
    assert "zerolm_batch_size_bucket" in metrics and "zerolm_queue_depth" in metrics


def test_batch_formation_groups_by_length():
    from zerolm.serve.batcher import BatchLimits, Item, MicroBatcher

    async def main():
        loop = asyncio.get_running_loop()
        b = MicroBatcher("m", lambda g, items: [None] * len(items), None, BatchLimits(max_batch_size=3,
                                                                                       max_batch_tokens=100))
        items = [Item(str(n), n, ("classify", ()), loop.create_future()) for n in (10, 50, 12, 11, 49, 9)]
        b.pending = list(items)
        first = b._take(items[0])  # the oldest (10) with its nearest lengths
        assert sorted(it.length for it in first) == [9, 10, 11]
        second = b._take(b.pending[0])  # 50 and 49 fit 100 tokens two at a time, not with 12
        assert sorted(it.length for it in second) == [49, 50]
    asyncio.run(main())


def test_sigterm_finishes_in_flight_requests(gpt_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "zerolm.cli.main", "serve", f"gpt={gpt_dir}", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        result = {}

        def call():
            result["r"] = httpx.post(url + "/v1/generate", timeout=60,
                                     json={"input": "ROMEO:", "max_new_tokens": 400, "greedy": True,
                                           "stop": ["never appears \u2603"]})
        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["r"].status_code == 200 and result["r"].json()["data"][0]["tokens"] > 0
        # uvicorn ends by re-raising the signal it caught, after the graceful shutdown
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Finished server process" in proc.stdout.read()
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
