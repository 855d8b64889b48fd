"""Progress for long phases: a bar with ETA and throughput on a terminal, a log line
every ~10 s otherwise, so no phase longer than a few seconds runs silent."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("zerolm.progress")

T = TypeVar("T")


class _LogProgress:
    def __init__(self, total: int | None, desc: str, unit: str, every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every_s
        self.n, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            of = f"/{self.total:,}" if self.total else ""
            eta = f", eta {(self.total - self.n) / max(rate, 1e-9):.0f} s" if self.total else ""
            log.info("%s: %s%s %ss (%.1f/s%s)", self.desc, f"{self.n:,}", of, self.unit, rate, eta)

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, unit: str = "it", enabled: bool | None = None):
    """A tqdm bar on a terminal (or when `enabled`), else periodic log lines; `enabled=False`
    turns both off. Has update(n) and close()."""
    if enabled is None:
        enabled = sys.stderr.isatty()
        if not enabled:
            return _LogProgress(total, desc, unit)
    if not enabled:
        return _LogProgress(total, desc, unit, every_s=float("inf"))
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


def counted(items: Iterable[T], desc: str, *, unit: str = "it", total: int | None = None,
            enabled: bool | None = None) -> Iterator[T]:
    """`items`, showing progress as they are consumed."""
    bar = progress_bar(total, desc, unit=unit, enabled=enabled)
    try:
        for x in items:
            yield x
            bar.update(1)
    finally:
        bar.close()
