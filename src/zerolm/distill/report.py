"""What distillation buys, measured: teacher vs student on the dev metric, parameters,
size on disk and latency at batch 1 and batch 32 (medians of repeated forward passes on
dev inputs, at the thread count of the run), with the speed-up and the retention."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def forward_pass(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """One inference forward pass over `batch` (what latency_ms times by default)."""
    return model(batch["input_ids"], **{k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch})


def latency_ms(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 10,
               run: Callable[[nn.Module, dict], Any] = forward_pass) -> float:
    """Median milliseconds of `run(model, batch)` (a forward pass; an encoder-decoder's
    decoding), two warm-up runs first."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t = time.perf_counter()
            run(model, batch)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


LATENCY_THREADS = 2  # the thread count latency is quoted at, whatever the run trained with


def compare(teacher: nn.Module, student: nn.Module, dev_batch: dict[str, torch.Tensor], *,
            repeats: int = 10, threads: int = LATENCY_THREADS,
            run: Callable[[nn.Module, dict], Any] = forward_pass) -> dict[str, Any]:
    """Latency (median ms of `run`, a forward pass by default) of both models on the first
    row of `dev_batch` and on all of it, and the speed-ups, at `threads` torch threads
    (fewer when this process may use fewer CPUs; the count is recorded)."""
    one = {k: v[:1] for k, v in dev_batch.items() if torch.is_tensor(v)}
    full = {k: v for k, v in dev_batch.items() if torch.is_tensor(v)}
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)))
    try:
        out: dict[str, Any] = {"batch_sizes": [1, int(full["input_ids"].shape[0])],
                               "tokens_per_row": int(full["input_ids"].shape[1]),
                               "threads": torch.get_num_threads(), "repeats": repeats}
        for name, model in (("teacher", teacher), ("student", student)):
            out[f"{name}_ms"] = [latency_ms(model, one, repeats, run), latency_ms(model, full, repeats, run)]
    finally:
        torch.set_num_threads(before)
    out["speedup"] = [t / s for t, s in zip(out["teacher_ms"], out["student_ms"])]
    return out


def plot(report: dict[str, Any], out_png: Path) -> Path:
    """Teacher vs student: the dev metric, parameters and latency side by side."""
    from zerolm.eval.plots import pyplot

    plt = pyplot()
    m = report["metric"]
    names = ["teacher", "student"]
    scores = [report["teacher"].get(m, 0.0), report["student"].get(m, 0.0)]
    if "kd_baseline" in report:
        names.append("kd_baseline")
        scores.append(report["kd_baseline"].get(m, 0.0))
    panels = [(m, scores),
              ("parameters (M)", [report["teacher_params"] / 1e6, report["student_params"] / 1e6])]
    if "latency" in report:
        b = report["latency"]["batch_sizes"][-1]
        panels.append((f"ms per batch of {b}", [report["latency"]["teacher_ms"][-1],
                                                report["latency"]["student_ms"][-1]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=120)
    for ax, (label, values) in zip(axes, panels):
        bars = ax.bar(names[:len(values)], values, color=["#8C8C8C", "#4C72B0", "#DD8452"][:len(values)])
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        top = 1.0 if label == m and all(0 <= v <= 1 for v in values) else max(values) * 1.15 or 1.0
        ax.set_ylim(0, top)  # from 0, so bar heights compare honestly
        ax.set_title(label, fontsize=9)
    ret = report.get("retention")
    fig.suptitle("distillation" + (f": {100 * ret:.1f}% of the teacher's {m}" if ret else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
