"""Dynamic micro-batching: requests that arrive together for a model run as one batch.

Every input text of a request is one *row* (`Item`) with its own future. A model's
`MicroBatcher` keeps the rows waiting for it and, in an asyncio task, forms a batch as
soon as one of these holds:

- `max_batch_size` rows of one group are waiting (a group is a kind of work with its
  options: rows of /v1/classify never share a batch with /v1/generate rows, and
  generation rows share one only with rows of the same sampling options);
- the oldest row has waited `max_wait_ms`.

The batch is the oldest row plus the waiting rows of its group closest to it in length
(padding is wasted work), within `max_batch_size` rows and `max_batch_tokens` padded
tokens. The oldest row always goes, so nothing starves. The batch then runs in the
executor, off the event loop; a single-thread executor shared by every model keeps the
CPU's threads for one batch at a time. An exception inside a batch fails that batch's
rows only.

The queue is bounded (`max_queue` rows): `submit` raises `QueueFull` beyond it, which the
server answers with 429.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's queue has no room; `retry_after` is a guess in seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"queue full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Item:
    """One row of work: a text and what it needs, answered through `future`."""

    payload: Any  # what the batch function receives for this row (a text)
    length: int  # its tokens (the padded cost of the row in a batch)
    group: Hashable  # only rows of one group share a batch
    future: asyncio.Future
    on_token: Callable[[int], None] | None = None  # generation streams tokens here (thread-safe)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchLimits:
    max_batch_size: int = 32  # rows per batch at most
    max_wait_ms: float = 5.0  # how long the oldest row may wait for company
    max_batch_tokens: int = 8192  # rows x longest row at most (the oldest row always goes)
    max_queue: int = 1024  # rows waiting at most; more is answered 429


RunBatch = Callable[[Hashable, list[Item]], Sequence[Any]]


class MicroBatcher:
    """The waiting rows of one model and the task that batches them.

    `run_batch(group, items)` runs in `executor` and returns one result per item, in
    order (or raises: every row of the batch then fails with that exception).
    `on_batch(group, size, seconds)` is told about every batch (metrics)."""

    def __init__(self, name: str, run_batch: RunBatch, executor: Executor, limits: BatchLimits,
                 on_batch: Callable[[Hashable, int, float], None] | None = None):
        self.name, self.run_batch, self.executor, self.limits = name, run_batch, executor, limits
        self.on_batch = on_batch
        self.pending: list[Item] = []
        self.running = 0  # rows of the batch in the executor now
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batch_seconds = 0.05  # running estimate of one batch's time, for Retry-After

    # ------------------------------------------------------------ queue side
    def submit(self, items: list[Item]) -> None:
        """Queue `items` (all or none): QueueFull when they would pass max_queue."""
        self._drop_abandoned()
        if len(self.pending) + len(items) > self.limits.max_queue:
            batches_ahead = len(self.pending) / self.limits.max_batch_size + 1
            raise QueueFull(max(1.0, round(batches_ahead * self._batch_seconds)))
        self.pending.extend(items)
        self._wake.set()

    @property
    def depth(self) -> int:
        """Rows waiting (not yet in a batch)."""
        return len(self.pending)

    def _drop_abandoned(self) -> None:
        """Rows whose request gave up (timeout, disconnect) never run."""
        if any(it.future.done() for it in self.pending):
            self.pending = [it for it in self.pending if not it.future.done()]

    # ------------------------------------------------------------ batch side
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Stop batching; rows still waiting are failed (the server drains before this)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for it in self.pending:
            if not it.future.done():
                it.future.set_exception(RuntimeError("the server is shutting down"))
        self.pending.clear()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = self.pending[0]
            deadline = oldest.enqueued + self.limits.max_wait_ms / 1000
            while (sum(it.group == oldest.group for it in self.pending) < self.limits.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            self._drop_abandoned()
            if oldest.future.done():
                continue
            batch = self._take(oldest)
            self.running = len(batch)
            t = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, oldest.group, batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch gave {len(results)} results for {len(batch)} rows")
            except Exception as e:  # this batch's rows fail; the server keeps serving
                log.exception("%s: a batch of %d rows failed", self.name, len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
            else:
                for it, r in zip(batch, results):
                    if not it.future.done():
                        it.future.set_result(r)
            finally:
                self.running = 0
            seconds = time.perf_counter() - t
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(oldest.group, len(batch), seconds)

    def _take(self, oldest: Item) -> list[Item]:
        """The oldest row and the rows of its group nearest to it in length, within the
        batch limits; removed from the queue."""
        lim = self.limits
        same = sorted((it for it in self.pending if it.group == oldest.group), key=lambda it: it.length)
        i = same.index(oldest)
        lo, hi, longest = i, i + 1, oldest.length  # the batch is same[lo:hi]
        while hi - lo < lim.max_batch_size:
            left = same[lo - 1] if lo > 0 else None
            right = same[hi] if hi < len(same) else None
            if left is None and right is None:
                break
            # the neighbour closer in length to the oldest row joins first
            take_left = right is None or (left is not None
                                          and oldest.length - left.length <= right.length - oldest.length)
            nxt = left if take_left else right
            if (hi - lo + 1) * max(longest, nxt.length) > lim.max_batch_tokens:
                break
            longest = max(longest, nxt.length)
            if take_left:
                lo -= 1
            else:
                hi += 1
        batch = same[lo:hi]
        chosen = set(map(id, batch))
        self.pending = [it for it in self.pending if id(it) not in chosen]
        return batch
