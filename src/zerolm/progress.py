"""Progress for long phases: a tqdm bar with ETA and throughput on a terminal, else a log
line at most every ~10 s, so no phase longer than a few seconds runs silent (tokenizing,
evaluating, predicting, embedding)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("zerolm.progress")

PROGRESS_EVERY_S = 10.0  # without a terminal, a progress log line at most this often
T = TypeVar("T")


class Progress:
    """How far a long job got: a tqdm bar on a terminal, else a log line at most every
    `every_s` seconds, so that a job's log shows it is alive and how far it is.

    Used for tokenizing here and for evaluation in the training loop. `unit` "B" counts
    bytes (shown as kB / MB); anything else is a count of that unit.
    """

    def __init__(self, desc: str, *, total: int | None = None, unit: str = "it", bar: bool = True,
                 every_s: float | None = None, logger: logging.Logger | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.log = logger or log
        self.n = 0
        self._last = time.monotonic()
        self._bar = None
        if bar and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                             dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info("%s: %s", self.desc, self._done())

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counting one per item as it is taken."""
        for x in items:
            yield x
            self.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _done(self) -> str:
        """Like "12.3 MB of 40.0 MB (31%)", "batch 120 of 400 (30%)" or "batch 120"."""
        if self.unit == "B":
            done = f"{self.n / 1e6:,.1f} MB"
            of = f" of {self.total / 1e6:,.1f} MB" if self.total else ""
        else:
            done = f"{self.unit} {self.n:,}"
            of = f" of {self.total:,}" if self.total else ""
        pct = f" ({min(100 * self.n / self.total, 100):.0f}%)" if self.total else ""
        return done + of + pct


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool | None = None) -> Progress:
    """A Progress; `enabled=False` keeps it silent (library callers that report themselves)."""
    p = Progress(desc, total=total, unit=unit, bar=enabled is not False)
    if enabled is False:
        p.every_s = float("inf")
    return p


def counted(items: Iterable[T], desc: str, *, unit: str = "it", total: int | None = None,
            enabled: bool | None = None) -> Iterator[T]:
    """`items`, showing progress as they are consumed."""
    with progress_bar(total, desc, unit=unit, enabled=enabled) as bar:
        yield from bar.wrap(items)
