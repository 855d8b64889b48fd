"""Shared helpers for benchmarks: timing medians, peak numbers, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch


def measured_matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 matmul peak of this machine as torch runs it now (threads, BLAS): the best of
    `repeats` n x n x n products. MFU is quoted against it, not against a figure from
    other hardware (the AMD development machine gives ~187 GFLOP/s, an AVX-512 Xeon ~340)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn, repeats: int) -> float:
    return statistics.median([_timed(fn) for _ in range(repeats)])


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "cpu": cpu_name(), "python": platform.python_version()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def emit(table_rows: list[list[str]], header: list[str], record: dict) -> None:
    widths = [max(len(str(r[i])) for r in [header, *table_rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in table_rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("JSON " + json.dumps(record))
