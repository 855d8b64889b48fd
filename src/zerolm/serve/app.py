"""The HTTP service: FastAPI routes over micro-batched models.

Routes: POST /v1/classify, /v1/tag, /v1/generate (JSON, or server-sent events with
"stream": true), /v1/embeddings (OpenAI's shape); GET /v1/models, /healthz (the process
is up), /readyz (models loaded and warmed), /metrics (Prometheus), /docs (OpenAPI), and
the web page at / with its files under /static.

Errors are JSON `{"error": {"message", "type", "code", "field"}}`: 401 without the API key
(when one is set), 404 unknown model, 400 a model asked for work it does not do, 413 a
body over the limit, 422 a malformed or empty input (naming the field) or an over-long one
with truncation off, 429 a full queue (with Retry-After), 504 a request past its timeout,
500 a batch that failed (only that batch's requests; the server keeps serving).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from zerolm.errors import ZeroLMError
from zerolm.generate import GenerationConfig
from zerolm.serve import schemas as S
from zerolm.serve.batcher import BatchLimits, Item, MicroBatcher, QueueFull
from zerolm.serve.engine import ROUTES as ENGINE_ROUTES
from zerolm.serve.engine import Endpoint, TextStream, encode_embedding, generation_group
from zerolm.serve.metrics import Metrics

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "ZEROLM_API_KEY"
SWITCH_INTERVAL_S = float(os.environ.get("ZEROLM_SWITCH_INTERVAL", "0.0002"))  # see Server.start
# routes anyone may read with an API key set: liveness, and the page's own static files
# (they hold no data; the page sends the key the user types with every API call)
PUBLIC = ("/healthz", "/", "/favicon.ico")
ROUTES = ("/v1/classify", "/v1/tag", "/v1/intent_slots", "/v1/assist", "/v1/generate", "/v1/embeddings", "/v1/models",
          "/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json")


@dataclass
class ServeSettings:
    """Knobs of `zerolm serve` (each is a flag of the same name)."""

    max_batch_size: int = 32  # rows per batch at most (1: no batching)
    max_wait_ms: float = 5.0  # how long a request may wait for others to share its batch
    max_batch_tokens: int = 16384  # rows x longest row per batch at most
    max_queue: int = 1024  # rows waiting per model at most; beyond, 429 with Retry-After
    timeout_s: float = 30.0  # a request not answered in this time gets 504
    max_body: int = 1_000_000  # request body bytes at most; beyond, 413
    max_inputs: int = 256  # texts per request at most
    max_new_tokens: int = 512  # generation length a request may ask for at most
    truncate: bool = True  # cut over-long inputs (and say so) instead of answering 422
    api_key: str | None = None  # when set, every route but /healthz and the page needs it
    cors: tuple[str, ...] = ()  # origins allowed to call from a browser (none: CORS off)
    threads: int | None = None  # torch threads of the model worker (None: torch's default)
    # POST /v1/assist (zerolm.assistant): the served intent_slots model's name, a served
    # out-of-scope classifier's name (or None), a FAQ index directory (or None)
    assistant: tuple[str, str | None] | None = None
    faq_index: str | None = None
    min_faq_score: float = 0.6

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_queue", "max_body", "max_inputs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ZeroLMError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ZeroLMError(f"max-wait-ms must be >= 0 and timeout > 0, got {self.max_wait_ms}, {self.timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise ZeroLMError(f"threads must be >= 1, got {self.threads}")

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(self.max_batch_size, self.max_wait_ms, self.max_batch_tokens, self.max_queue)


class ServeError(Exception):
    """An answer other than 200, with the message the client sees."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.field, self.headers = status, message, kind, field, headers


def error_response(status: int, message: str, kind: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status, **({"field": field} if field else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


class Server:
    """The models, their batchers and the one worker thread, shared by the routes."""

    def __init__(self, models: dict[str, Any], settings: ServeSettings):
        if not models:
            raise ZeroLMError("serve needs at least one model")
        self.settings = settings
        self.metrics = Metrics()
        self.endpoints = {name: Endpoint(name, pred) for name, pred in models.items()}
        self.batchers: dict[str, MicroBatcher] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.ready = False
        self.index = None  # the assistant's FAQ index
        if settings.assistant is not None:
            self._check_assistant()

    def _check_assistant(self) -> None:
        joint, oos = self.settings.assistant
        for role, name, kind in (("joint model", joint, "intent_slots"), ("out-of-scope model", oos, "classify")):
            if name is None:
                continue
            if name not in self.endpoints:
                raise ZeroLMError(f"--assistant: the {role} {name!r} is not among the served models "
                                  f"({', '.join(self.endpoints)})")
            if self.endpoints[name].kind != kind:
                raise ZeroLMError(f"--assistant: the {role} {name!r} is a {self.endpoints[name].kind} model, "
                                  f"not {kind}")
        if oos is not None and getattr(self.endpoints[oos].pred.task, "oos", None) is None:
            raise ZeroLMError(f"--assistant: {oos!r} has no out-of-scope detection (fine-tune it with "
                              "task.oos_label)")
        if self.settings.faq_index is not None:
            from zerolm.index import Index

            self.index = Index.load(self.settings.faq_index)

    # ------------------------------------------------------------ life cycle
    async def start(self) -> None:
        import sys

        # The model thread needs the GIL back after every torch op; while the event loop
        # holds it (parsing requests, JSON), Python hands it over only every switch
        # interval (5 ms by default), which would stall a forward pass of ~100 ops for
        # hundreds of ms. A short interval keeps the model busy.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        init: Callable[[], None] | None = None
        if self.settings.threads:
            import torch

            threads = self.settings.threads
            torch.set_num_threads(threads)  # the setting is per process; set once more in the worker
            init = lambda: torch.set_num_threads(threads)  # noqa: E731
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zerolm-model", initializer=init)
        for name, ep in self.endpoints.items():
            b = MicroBatcher(name, ep.run_batch, self.executor, self.settings.limits,
                             on_batch=self._batch_metrics(name))
            b.start()
            self.batchers[name] = b
        await asyncio.get_running_loop().run_in_executor(self.executor, self._warm_up)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def _warm_up(self) -> None:
        """One small call of every kind of work each model accepts (the first calls of a
        model are slow); work a model turns out not to do is dropped from its routes."""
        if self.index is not None:
            self.index.search(["warm up the index"], k=1)  # loads the index's embedding model
        for ep in self.endpoints.values():
            for work in list(ep.works):
                t = time.perf_counter()
                try:
                    _warm(ep, work)
                except Exception as e:
                    if work == ep.kind:
                        raise ZeroLMError(f"model {ep.name}: its first {work} call failed: {e}") from e
                    log.warning("model %s: %s is not available (%s)", ep.name, work, e)
                    ep.works.remove(work)
                else:
                    log.info("model %s: %s warmed up in %.2f s", ep.name, work, time.perf_counter() - t)

    def _batch_metrics(self, name: str):
        def record(group, size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name, group[0]).observe(size)
            self.metrics.batch_seconds.labels(name, group[0]).observe(seconds)
            self.metrics.queue_depth.labels(name).set(self.batchers[name].depth)
        return record

    # ------------------------------------------------------------ requests
    def endpoint(self, name: str | None, work: str, route: str) -> Endpoint:
        if name is None:
            if len(self.endpoints) > 1:
                raise ServeError(422, f"model: required when several models are served "
                                      f"({', '.join(self.endpoints)})", field="model")
            ep = next(iter(self.endpoints.values()))
        elif name not in self.endpoints:
            raise ServeError(404, f"model {name!r} is not served here; served: {', '.join(self.endpoints)}",
                             kind="not_found_error", field="model")
        else:
            ep = self.endpoints[name]
        if work not in ep.works:
            raise ServeError(400, f"model {ep.name!r} ({ep.kind}) does not answer {route}; it answers "
                                  f"{', '.join(S_ROUTES[w] for w in ep.works)}", field="model")
        return ep

    def texts(self, ep: Endpoint, given: str | list[str], extra_room: int = 0) -> tuple[list[str], list[int], list[bool]]:
        """The request's texts, their token counts (cut to the model's limit) and whether
        each was truncated; 422 for too many texts, or an over-long one without truncation."""
        texts = [given] if isinstance(given, str) else list(given)
        if len(texts) > self.settings.max_inputs:
            raise ServeError(422, f"input: {len(texts)} texts, more than the {self.settings.max_inputs} a request "
                                  "may hold; split the request", field="input")
        limit = ep.max_length - extra_room
        counts, cut = [], []
        for i, t in enumerate(texts):
            n = ep.count_tokens(t)
            if n > limit and not self.settings.truncate:
                where = "input" if isinstance(given, str) else f"input[{i}]"
                raise ServeError(422, f"{where}: {n} tokens, over the model's limit of {limit}; shorten it "
                                      "(the server runs with --no-truncate)", field=where)
            counts.append(min(n, limit) if ep.kind != "generate" else n)
            cut.append(n > limit and ep.kind != "generate")
        self.metrics.prompt_tokens.labels(ep.name).inc(sum(counts))
        return texts, counts, cut

    def submit(self, ep: Endpoint, group, texts: list[str], lengths: list[int],
               on_token: list[Callable[[int], None]] | None = None) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        items = [Item(t, n, group, loop.create_future(), on_token[i] if on_token else None)
                 for i, (t, n) in enumerate(zip(texts, lengths))]
        batcher = self.batchers[ep.name]
        try:
            batcher.submit(items)
        except QueueFull as e:
            raise ServeError(429, f"model {ep.name!r} is busy: its queue is full ({self.settings.max_queue} rows); "
                                  f"retry after {e.retry_after:.0f} s", kind="rate_limit_error",
                             headers={"Retry-After": f"{e.retry_after:.0f}"}) from None
        self.metrics.queue_depth.labels(ep.name).set(batcher.depth)
        return [it.future for it in items]

    async def wait(self, futures: list[asyncio.Future]) -> list[Any]:
        """The results of a request's rows, or 504 / 500 (its rows then dropped)."""
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(504, f"no answer within {self.settings.timeout_s:g} s; the server is busy or the "
                                  "request too large (the timeout is --timeout)", kind="timeout_error") from None
        except Exception as e:
            raise ServeError(500, f"the batch this request ran in failed: {type(e).__name__}: {e}",
                             kind="server_error") from None
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()


S_ROUTES = ENGINE_ROUTES


def _warm(ep: Endpoint, work: str) -> None:
    if work in ("classify", "tag", "intent_slots"):
        ep.pred.predict(["warm up the model"])
    elif work == "embed":
        ep.pred.embed(["warm up the model"])
    else:
        ep.pred.generate(["warm up"], max_new_tokens=2, greedy=True)


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
        out = {"object": "list", "data": [ep.describe() for ep in srv.endpoints.values()]}
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
        """Continuations of the prompts; with "stream": true, server-sent events
        `{"index", "text"}` as tokens come, `{"index", "text", "finish_reason"}` at each
        text's end, then `[DONE]`."""
        ep = srv.endpoint(req.model, "generate", "/v1/generate")
        options = req.model_dump(exclude={"model", "input", "stream"})
        if options["max_new_tokens"] > settings.max_new_tokens:
            raise ServeError(422, f"max_new_tokens: {options['max_new_tokens']} is more than this server's "
                                  f"limit of {settings.max_new_tokens}", field="max_new_tokens")
        try:
            group = generation_group(options)
        except ZeroLMError as e:  # GenerationConfig names the field first
            field = str(e).split(" ", 1)[0]
            raise ServeError(422, str(e), field=field if field in options else None) from None
        cfg = GenerationConfig(**options)
        texts, counts, _ = srv.texts(ep, req.input)
        lengths = [n + cfg.max_new_tokens for n in counts]
        if not req.stream:
            results = await srv.wait(srv.submit(ep, group, texts, lengths))
            made = sum(r["tokens"] for r in results)
            srv.metrics.generated_tokens.labels(ep.name).inc(made)
            return {"object": "list", "model": ep.name, "usage": _usage(sum(counts), made),
                    "data": [{"index": i, **r} for i, r in enumerate(results)]}
        return _stream(srv, ep, cfg, group, texts, lengths)

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
            lengths: list[int]) -> StreamingResponse:
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
                    yield _sse({"index": i, "text": streams[i].finish(r["text"]),
                                "finish_reason": r["finish_reason"], "tokens": r["tokens"]})
            yield "data: [DONE]\n\n"
        finally:  # the client left or the stream ended: rows not started never run
            for f in futures:
                if not f.done():
                    f.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException so that FastAPI's body parsing passes
    it on as it is (it turns other errors into 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the body is over this server's limit of {limit:,} bytes (--max-body)")


class Gate:
    """Outer ASGI layer of every request: the API key, the body size limit, and the
    request counters and latency of /metrics (streams are timed to their end)."""

    def __init__(self, app, server: Server):
        self.app, self.srv = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
        status = [500]
        started = [False]
        t0 = time.perf_counter()
        settings = self.srv.settings

        async def send_watched(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        async def reply(response: Response) -> None:
            await response(scope, receive, send_watched)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if settings.api_key and not (path in PUBLIC or path.startswith("/static/")) \
                    and scope.get("method") != "OPTIONS" and not _authorized(headers, settings.api_key):
                return await reply(error_response(401, "missing or wrong API key: send the header "
                                                       "'Authorization: Bearer KEY'", "authentication_error",
                                                  headers={"WWW-Authenticate": "Bearer"}))
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > settings.max_body:
                return await reply(_too_large(int(declared), settings.max_body))
            seen = [0]

            async def receive_limited():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > settings.max_body:
                        raise BodyTooLarge(settings.max_body)
                return message

            await self.app(scope, receive_limited, send_watched)
        except BodyTooLarge:
            if not started[0]:
                await reply(_too_large(None, settings.max_body))
        finally:
            m = self.srv.metrics
            m.requests.labels(route, str(status[0])).inc()
            m.latency.labels(route).observe(time.perf_counter() - t0)


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


def _too_large(size: int | None, limit: int) -> JSONResponse:
    got = f"{size:,} bytes" if size is not None else "the body"
    return error_response(413, f"{got} is over this server's limit of {limit:,} bytes (--max-body)",
                          "invalid_request_error")


def _authorized(headers: dict[str, str], key: str) -> bool:
    given = headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _version() -> str:
    from zerolm import __version__

    return __version__
