"""The HTTP service: FastAPI routes over micro-batched models.

Routes: POST /v1/classify, /v1/tag, /v1/generate (a causal LM's continuation or an
encoder-decoder's target; JSON, or server-sent events with
"stream": true), /v1/embeddings (OpenAI's shape); GET /v1/models, /healthz (the process
is up), /readyz (models loaded and warmed), /metrics (Prometheus), /docs (OpenAPI), and
the web page at / with its files under /static.

Errors are JSON `{"error": {"message", "type", "code", "field"}}`: 401 without the API key
(when one is set), 404 unknown model, 400 a model asked for work it does not do, 413 a
body over the limit, 422 a malformed or empty input (naming the field) or an over-long one
with truncation off, 429 a full queue (with Retry-After), 504 a request past its timeout,
500 a batch that failed (only that batch's requests; the server keeps serving).

The parts: `server.Server` (models, batchers, the worker thread, the steps of a request),
`gate.Gate` (API key, body limit, request metrics), `engine.Endpoint` (one model's work).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from zerolm.errors import ZeroLMError
from zerolm.generate import GenerationConfig
from zerolm.serve import schemas as S
from zerolm.serve.engine import Endpoint, TextStream, encode_embedding, generation_group
from zerolm.serve.gate import Gate, error_response
from zerolm.serve.server import ServeError, Server, ServeSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "ZEROLM_API_KEY"


def _usage(prompt: int, completion: int | None = None) -> dict[str, int]:
    out = {"prompt_tokens": prompt, "total_tokens": prompt + (completion or 0)}
    if completion is not None:
        out["completion_tokens"] = completion
    return out


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(models: dict[str, Any], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `models` (name -> `zerolm.load` Predictor)."""
    settings = settings or ServeSettings()
    if settings.api_key is None and os.environ.get(API_KEY_ENV):
        settings.api_key = os.environ[API_KEY_ENV]
    srv = Server(models, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await srv.start()
        log.info("serving %s", ", ".join(f"{n} ({e.kind})" for n, e in srv.endpoints.items()))
        yield
        await srv.stop()

    app = FastAPI(title="zerolm", version=_version(), lifespan=lifespan,
                  description="Classification, tagging, generation and embeddings of zerolm models.",
                  responses={code: {"model": S.ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 500, 504)})
    app.state.server = srv

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return error_response(e.status, e.message, e.kind, e.field, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        err = errs[0]
        if "str" in err.get("loc", ()) and isinstance(err.get("input"), list):
            # str | list[str] given a list: the list member's complaint is the one that helps
            err = next((x for x in errs if any("list[" in str(p) for p in x.get("loc", ()))), err)
        field = _field(err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if field == "input" and err.get("type") == "string_type" and not isinstance(err.get("input"), list):
            msg = "must be a text or a list of texts"
        if err.get("type") == "json_invalid":
            field, msg = "body", f"not valid JSON ({err.get('ctx', {}).get('error', msg)})"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field (see /docs for the fields of this route)"
        elif err.get("type") == "missing":
            msg = "required"
        return error_response(422, f"{field}: {msg}", "invalid_request_error", field)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a bug: still the JSON shape, and logged
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), kind, headers=getattr(e, "headers", None))

    # ---------------------------------------------------------------- routes
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    async def readyz():
        if not srv.ready:
            return error_response(503, "models are loading or warming up", "unavailable")
        return {"status": "ready", "models": list(srv.endpoints)}

    @app.get("/metrics", tags=["service"])
    async def metrics() -> Response:
        for name, b in srv.batchers.items():
            srv.metrics.queue_depth.labels(name).set(b.depth)
        return Response(srv.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=S.ModelList, response_model_exclude_none=True, tags=["models"])
    async def list_models():
        out = {"object": "list", "data": [ep.describe(settings) for ep in srv.endpoints.values()]}
        if settings.assistant is not None:
            out["assistant"] = {"joint": settings.assistant[0], "oos": settings.assistant[1],
                                "faq_index": settings.faq_index}
        return out

    @app.post("/v1/classify", response_model=S.ClassifyResponse, response_model_exclude_none=True, tags=["models"])
    async def classify(req: S.ClassifyRequest):
        """The class of each text with every class's probability."""
        ep = srv.endpoint(req.model, "classify", "/v1/classify")
        texts, counts, cut = srv.texts(ep, req.input)
        results = await srv.wait(srv.submit(ep, ("classify", ()), texts, counts))
        data = [{"index": i, **r, "truncated": c} for i, (r, c) in enumerate(zip(results, cut))]
        return {"object": "list", "model": ep.name, "data": data, "usage": _usage(sum(counts))}

    @app.post("/v1/tag", response_model=S.TagResponse, response_model_exclude_none=True, tags=["models"])
    async def tag(req: S.TagRequest):
        """Per-word tags and the entities they make, with character offsets into the text."""
        ep = srv.endpoint(req.model, "tag", "/v1/tag")
        texts, counts, cut = srv.texts(ep, req.input)
        results = await srv.wait(srv.submit(ep, ("tag", ()), texts, counts))
        data = [{"index": i, "tokens": r["tokens"], "tags": r["tags"], "entities": r["entities"], "truncated": c}
                for i, (r, c) in enumerate(zip(results, cut))]
        return {"object": "list", "model": ep.name, "data": data, "usage": _usage(sum(counts))}

    @app.post("/v1/intent_slots", response_model=S.IntentSlotsResponse, response_model_exclude_none=True,
              tags=["models"])
    async def intent_slots(req: S.IntentSlotsRequest):
        """The intent of each utterance (with its probability) and its slots: per-word tags and
        typed spans with character offsets."""
        ep = srv.endpoint(req.model, "intent_slots", "/v1/intent_slots")
        texts, counts, cut = srv.texts(ep, req.input)
        results = await srv.wait(srv.submit(ep, ("intent_slots", ()), texts, counts))
        data = [{"index": i, **r, "truncated": c} for i, (r, c) in enumerate(zip(results, cut))]
        return {"object": "list", "model": ep.name, "data": data, "usage": _usage(sum(counts))}

    @app.post("/v1/assist", response_model=S.AssistResponse, tags=["assistant"])
    async def assist(req: S.AssistRequest):
        """The customer-service assistant (zerolm.assistant): out of scope or not, the intent
        and slots, and the FAQ answer when one matches, with a reply to show the user."""
        from zerolm.assistant import FAQ_CANDIDATES, AssistantSettings, compose

        if settings.assistant is None:
            raise ServeError(404, "the assistant is off: start the server with --assistant JOINT[,OOS] "
                                  "[--faq-index DIR]", kind="not_found_error")
        if req.model is not None:
            raise ServeError(422, "model: /v1/assist uses the models given to --assistant; leave it out",
                             field="model")
        joint_name, oos_name = settings.assistant
        joint = srv.endpoints[joint_name]
        texts, counts, _ = srv.texts(joint, req.input)
        waits = srv.submit(joint, ("intent_slots", ()), texts, counts)
        if oos_name is not None:
            oos_ep = srv.endpoints[oos_name]
            waits += srv.submit(oos_ep, ("classify", ()), texts, [min(n, oos_ep.max_length) for n in counts])
        if srv.index is not None:  # the FAQ search runs in the model worker too
            waits.append(asyncio.get_running_loop().run_in_executor(srv.executor, srv.index.search, texts,
                                                                    FAQ_CANDIDATES))
        results = await srv.wait(waits)
        n = len(texts)
        parses = results[:n]
        oos = results[n:2 * n] if oos_name is not None else [None] * n
        hits = results[-1] if srv.index is not None else [[] for _ in texts]
        rules = AssistantSettings(min_faq_score=settings.min_faq_score)
        data = [{"index": i, **compose(t, p, o, h, rules)} for i, (t, p, o, h) in enumerate(zip(texts, parses, oos, hits))]
        return {"object": "list", "model": joint_name, "data": data, "usage": _usage(sum(counts))}

    @app.post("/v1/embeddings", response_model=S.EmbeddingsResponse, response_model_exclude_none=True, tags=["models"])
    async def embeddings(req: S.EmbeddingsRequest):
        """Sentence embeddings (mean-pooled, L2-normalised), in OpenAI's request and response shape."""
        ep = srv.endpoint(req.model, "embed", "/v1/embeddings")
        width = ep.pred.model.config.d_model
        if req.dimensions is not None and req.dimensions != width:
            raise ServeError(422, f"dimensions: this model's embeddings have {width} dimensions, not "
                                  f"{req.dimensions}", field="dimensions")
        texts, counts, _ = srv.texts(ep, req.input)
        vectors = await srv.wait(srv.submit(ep, ("embed", ()), texts, counts))
        data = [{"object": "embedding", "index": i, "embedding": encode_embedding(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "model": ep.name, "data": data, "usage": _usage(sum(counts))}

    @app.post("/v1/generate", response_model=S.GenerateResponse, response_model_exclude_none=True, tags=["models"],
              responses={200: {"content": {"text/event-stream": {}}}})
    async def generate(req: S.GenerateRequest):
        """Continuations of the prompts (a causal LM), or the target of each input (an
        encoder-decoder); with "stream": true, server-sent events
        `{"index", "text"}` as tokens come, `{"index", "text", "finish_reason"}` at each
        text's end, then `[DONE]`."""
        ep = srv.endpoint(req.model, "generate", "/v1/generate")
        options = req.model_dump(exclude={"model", "input", "stream"})
        if ep.seq2seq:  # a fine-tuned one decodes as it was fine-tuned where the request is silent
            options = {k: v for k, v in options.items() if k in req.model_fields_set}
        if options.get("max_new_tokens", 0) > settings.max_new_tokens:
            raise ServeError(422, f"max_new_tokens: {options['max_new_tokens']} is more than this server's "
                                  f"limit of {settings.max_new_tokens}", field="max_new_tokens")
        try:
            cfg = ep.pred.generation_config(**options)
        except ZeroLMError as e:  # GenerationConfig names the field first
            field = str(e).split(" ", 1)[0]
            field = field if field in options else next((k for k in options if k in str(e)), None)
            raise ServeError(422, str(e), field=field) from None
        if cfg.num_beams > settings.max_num_beams:
            raise ServeError(422, f"num_beams: {cfg.num_beams} is more than this server's limit of "
                                  f"{settings.max_num_beams}", field="num_beams")
        if cfg.max_new_tokens > settings.max_new_tokens:  # the model's own default, over the server's limit
            cfg = dataclasses.replace(cfg, max_new_tokens=settings.max_new_tokens)
        group = generation_group(cfg)
        texts, counts, cut = srv.texts(ep, req.input)
        lengths = [(n + cfg.max_new_tokens) * cfg.num_beams for n in counts]  # a beam search runs K rows each
        cut = cut if ep.seq2seq else [None] * len(texts)
        if not req.stream:
            results = await srv.wait(srv.submit(ep, group, texts, lengths))
            made = sum(r["tokens"] for r in results)
            srv.metrics.generated_tokens.labels(ep.name).inc(made)
            return {"object": "list", "model": ep.name, "usage": _usage(sum(counts), made),
                    "data": [{"index": i, **r, "truncated": c} for i, (r, c) in enumerate(zip(results, cut))]}
        return _stream(srv, ep, cfg, group, texts, lengths, cut)

    # ---------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    app.add_middleware(Gate, server=srv)
    if settings.cors:  # added last: the outermost layer answers browsers' preflight requests itself
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def _stream(srv: Server, ep: Endpoint, cfg: GenerationConfig, group, texts: list[str],
            lengths: list[int], cut: list[bool | None]) -> StreamingResponse:
    """Submit the prompts now (so that a full queue is a 429, not a broken stream) and
    stream their tokens as server-sent events."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def sink(i: int) -> Callable[[int], None]:  # called in the worker thread
        return lambda token: loop.call_soon_threadsafe(events.put_nowait, ("token", i, token))

    futures = srv.submit(ep, group, texts, lengths, on_token=[sink(i) for i in range(len(texts))])
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: events.put_nowait(("done", i, None)))

    async def body() -> AsyncIterator[str]:
        streams = [TextStream(ep.tokenizer, cfg) for _ in texts]
        left = set(range(len(texts)))
        deadline = time.monotonic() + srv.settings.timeout_s
        try:
            while left:
                try:
                    kind, i, token = await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    yield _sse({"error": {"message": f"no answer within {srv.settings.timeout_s:g} s",
                                          "type": "timeout_error", "code": 504}})
                    return
                if kind == "token" and i in left:
                    piece = streams[i].push(token)
                    if piece:
                        yield _sse({"index": i, "text": piece})
                elif kind == "done" and i in left:
                    left.discard(i)
                    f = futures[i]
                    if f.cancelled() or f.exception() is not None:
                        e = None if f.cancelled() else f.exception()
                        yield _sse({"index": i, "error": {"message": f"the batch failed: {e}", "type": "server_error",
                                                          "code": 500}})
                        continue
                    r = f.result()
                    srv.metrics.generated_tokens.labels(ep.name).inc(r["tokens"])
                    last = {"index": i, "text": streams[i].finish(r["text"]),
                            "finish_reason": r["finish_reason"], "tokens": r["tokens"]}
                    yield _sse(last if cut[i] is None else {**last, "truncated": cut[i]})
            yield "data: [DONE]\n\n"
        finally:  # the client left or the stream ended: rows not started never run
            for f in futures:
                if not f.done():
                    f.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _field(loc) -> str:
    """'input[2]' of pydantic's ('body', 'input', 'list[str]', 2): the field as the client
    wrote it, without the type names of a union's members."""
    out = ""
    for part in loc:
        if part == "body" or (isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)):
            continue
        name = str(part) or '""'  # an empty key is a field too
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out or "body"


def _version() -> str:
    from zerolm import __version__

    return __version__
