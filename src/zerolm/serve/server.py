"""The state a running server shares between its routes: the settings, the served models
(`Endpoint`s) with their micro-batchers, the one model worker thread, the assistant's FAQ
index; and the request-level steps every route takes (which model, which texts, submit,
wait with a timeout)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from zerolm.errors import ZeroLMError
from zerolm.serve.batcher import BatchLimits, Item, MicroBatcher, QueueFull
from zerolm.serve.engine import ROUTES as ENGINE_ROUTES
from zerolm.serve.engine import Endpoint
from zerolm.serve.metrics import Metrics

log = logging.getLogger(__name__)


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
    max_num_beams: int = 8  # beams a request may ask an encoder-decoder for at most (each costs a row)
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
        for name in ("max_batch_size", "max_batch_tokens", "max_queue", "max_body", "max_inputs", "max_new_tokens",
                     "max_num_beams"):
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
                                  f"{', '.join(ENGINE_ROUTES[w] for w in ep.works)}", field="model")
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
            counts.append(min(n, limit) if ep.cuts_inputs else n)
            cut.append(n > limit and ep.cuts_inputs)
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




def _warm(ep: Endpoint, work: str) -> None:
    if work in ("classify", "tag", "intent_slots"):
        ep.pred.predict(["warm up the model"])
    elif work == "embed":
        ep.pred.embed(["warm up the model"])
    else:
        ep.pred.generate(["warm up"], max_new_tokens=2, greedy=True)


