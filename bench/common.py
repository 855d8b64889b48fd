"""Shared helpers for benchmarks: timing medians, peak numbers, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch

# Measured fp32 matmul peak of the development machine (2 threads, MKL), see
# ../shared/BENCHMARKS.md; override with --peak-gflops on other hardware.
CPU_FP32_PEAK_GFLOPS = 187.0


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version()}


def emit(table_rows: list[list[str]], header: list[str], record: dict) -> None:
    widths = [max(len(str(r[i])) for r in [header, *table_rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in table_rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("JSON " + json.dumps(record))
