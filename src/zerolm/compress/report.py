"""Every compressed variant against the original, measured the same way, in one table
(report.md, report.json) and one plot (report.png): the dev metric and its change,
parameters, size on disk, latency at batch 1 and batch 32 and the speed-up.

How each number is taken, identically for every variant (PyTorch or ONNX):

- dev metric: `Predictor.evaluate(dev)` (the task's own report; its headline metric);
- latency: the median of `repeats` forward passes (interleaved across the models, after
  two warm-up rounds) of
  `predictor.model(input_ids, attention_mask=, token_type_ids=)` on tokenized dev inputs:
  the first evaluation batch of 32 (the longest dev inputs, as the distillation report
  times), and its first row alone for batch 1, cut to its own length; each variant's own
  tokenizer makes them (the same tensors for every variant of the original's vocabulary;
  a pruned vocabulary may split a rare word into more pieces, and is timed on what it
  sees); torch and
  onnxruntime both at `threads` threads (an ONNX session takes its thread count when it
  loads, so the count is set before the variants load); every variant is held in memory
  while they are timed;
- parameters: a PyTorch model's parameters (an int8 weight counts one per int8 value), an
  ONNX graph's initializers;
- size on disk: the files the variant is loaded from (an ONNX directory's other graph,
  e.g. model.int8.onnx beside model.onnx, not counted).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from zerolm.atomic import atomic_write_text
from zerolm.compress.save import check_out_dir, method_chain, read_record
from zerolm.compress.surgery import count_parameters
from zerolm.errors import ConfigError
from zerolm.modeldir import MODEL_FILE

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 32)
FILES = ("report.md", "report.json", "report.png")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def parse_variant(spec: str) -> tuple[str, str]:
    """"NAME=DIR" or "DIR" -> (name, path); the name defaults to the directory's name (with
    the graph's name for an .onnx file)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or os.path.exists(spec):
        path = spec
        p = Path(spec)
        name = f"{p.parent.name}/{p.name}" if p.suffix == ".onnx" else p.name
    return name, path


def _is_onnx(path: Path) -> bool:
    from zerolm.export.runtime import is_onnx_dir

    return is_onnx_dir(path)


def _files(path: Path) -> list[Path]:
    """The files a variant loads from: a zerolm / HF model directory (a run directory: its
    best/, else final/), or an ONNX directory without its other graphs."""
    if path.is_file():  # DIR/model.int8.onnx: that graph and the directory's other files
        return [path] + [f for f in path.parent.rglob("*") if f.is_file() and f.suffix != ".onnx"]
    if _is_onnx(path):
        from zerolm.export.runtime import read_manifest

        graph = path / read_manifest(path)["files"]["fp32"]
        return [graph] + [f for f in path.rglob("*") if f.is_file() and f.suffix != ".onnx"]
    if path.is_dir() and not (path / MODEL_FILE).exists():
        for sub in (path / "best", path / "final"):
            if (sub / MODEL_FILE).exists():
                path = sub
                break
    return [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []


def _onnx_parameters(model) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(model.path), load_external_data=False).graph
    return sum(math.prod(t.dims) for t in graph.initializer)


def _method(path: Path, model) -> str:
    """What the variant is: compress.json's method, the ONNX graph, or "original"."""
    if hasattr(model, "session"):  # an onnxruntime model (zerolm.export.runtime)
        return "onnx int8" if "int8" in Path(model.path).name else "onnx fp32"
    record = read_record(path)  # an unreadable one already failed the load
    return method_chain(record) if record else "pytorch"


def _forward(model, batch: dict[str, torch.Tensor]) -> float:
    """Seconds of one inference forward pass over `batch`."""
    args = {k: batch[k] for k in INPUTS[1:] if k in batch}
    with torch.inference_mode():
        t = time.perf_counter()
        model(batch["input_ids"], **args)
        return time.perf_counter() - t


def latencies_ms(models: list, batches: list[list[dict[str, torch.Tensor]]], repeats: int) -> list[list[float]]:
    """Median milliseconds per (model, batch); `batches[m]` are model m's inputs (the same
    inputs, made by each model's tokenizer). Passes are interleaved, one timed pass of
    every model per round after two warm-up rounds, so that a slow spell of the machine
    falls on every model alike rather than on whichever was being timed. Each timed pass
    follows an untimed one of the same model: thread pools keep spinning for a while after
    their work (onnxruntime's, OpenMP's), and that pass absorbs the previous model's."""
    times = [[[] for _ in batches[m]] for m in range(len(models))]
    for r in range(repeats + 2):
        for m, model in enumerate(models):
            for b, batch in enumerate(batches[m]):
                _forward(model, batch)
                t = _forward(model, batch)
                if r >= 2:
                    times[m][b].append(t)
    return [[1e3 * statistics.median(ts) for ts in per_model] for per_model in times]


def latency_ms(model, batch: dict[str, torch.Tensor], repeats: int) -> float:
    """Median milliseconds of one forward pass of one model over `batch`."""
    return latencies_ms([model], [[batch]], repeats)[0][0]


def timing_batches(pred, dev: str, batch_size: int = BATCH_SIZES[-1]) -> list[dict[str, torch.Tensor]]:
    """[first row alone (cut to its length), first evaluation batch] of the dev file."""
    task = pred.need_task("timing on dev inputs")
    first = next(iter(task.labelled_batches(dev, batch_size=batch_size).eval_batches(1)))
    full = {k: first[k] for k in INPUTS if k in first}
    n = int(full["attention_mask"][0].sum()) if "attention_mask" in full else full["input_ids"].shape[1]
    return [{k: v[:1, :n] for k, v in full.items()}, full]


def measure(name: str, path: str, dev: str) -> tuple[Any, dict[str, Any]]:
    """(predictor, row) of the variant at `path`, scored on `dev`; timed later with the others."""
    import zerolm
    from zerolm.tasks.base import scalars

    pred = zerolm.load(path)
    metric = getattr(pred.task, "metric", "loss")
    scores = scalars(pred.evaluate(dev))
    pred.model.eval()
    p = Path(path)
    onnx = hasattr(pred.model, "session")
    return pred, {"name": name, "path": str(path), "method": _method(p, pred.model),
                  "backend": "onnxruntime" if onnx else "pytorch", "metric": metric, "score": scores.get(metric),
                  "dev": scores, "parameters": _onnx_parameters(pred.model) if onnx else count_parameters(pred.model),
                  "bytes": sum(f.stat().st_size for f in _files(p))}


def compare(original: str, variants: list[tuple[str, str]], dev: str, *, threads: int = 2,
            repeats: int = 10) -> dict[str, Any]:
    """The report of `variants` [(name, path)] against `original` on the dev file `dev`."""
    for name, path in variants:
        if not Path(path).exists() and not str(path).startswith("python:"):
            raise ConfigError(f"--variants {name}: {path} does not exist")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # before loading: an ONNX session takes the count when it starts
    try:
        preds, rows = zip(*[measure(name, path, dev) for name, path in [("original", original), *variants]])
        log.info("timing %d models, interleaved, %d rounds", len(preds), repeats)
        batches = [timing_batches(p, dev) for p in preds]
        for row, ms, b in zip(rows, latencies_ms([p.model for p in preds], batches, repeats), batches):
            row["ms"] = ms
            row["tokens"] = [int(x["input_ids"].shape[1]) for x in b]
    finally:
        torch.set_num_threads(before)
    rows = list(rows)
    rows[0]["method"] = "original"
    base = rows[0]
    metric = base["metric"]
    for r in rows:
        if r["metric"] != metric:
            raise ConfigError(f"{r['path']}: its task's metric is {r['metric']}, the original's {metric}: "
                              "a variant must be of the original's task")
        r["change"] = None if r["score"] is None or base["score"] is None else r["score"] - base["score"]
        r["speedup"] = [b / m for b, m in zip(base["ms"], r["ms"])]
        r["size_ratio"] = base["bytes"] / r["bytes"] if r["bytes"] else None
    return {"original": str(original), "dev": str(dev), "metric": metric, "threads": threads, "repeats": repeats,
            "batch_sizes": [int(b["input_ids"].shape[0]) for b in batches[0]], "tokens": rows[0]["tokens"],
            "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    m, (b1, bn) = report["metric"], report["batch_sizes"]
    head = (f"| variant | method | backend | {m} | change | parameters | size on disk | ms @ batch {b1} | "
            f"ms @ batch {bn} | speed-up @ {b1} | speed-up @ {bn} |")
    lines = [f"# Compressed variants of {report['original']}", "",
             f"Dev file {report['dev']}; latency: median of {report['repeats']} forward passes at "
             f"{report['threads']} thread{'s' * (report['threads'] != 1)}, batch {b1} ({report['tokens'][0]} tokens) and batch {bn} "
             f"({report['tokens'][1]} tokens per row, the longest dev inputs).", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        score = "?" if r["score"] is None else f"{r['score']:.4f}"
        change = "" if r["change"] is None or r["name"] == "original" else f"{r['change']:+.4f}"
        params = "?" if r["parameters"] is None else f"{r['parameters']:,}"
        lines.append(f"| {r['name']} | {r['method']} | {r['backend']} | {score} | {change} | {params} | "
                     f"{r['bytes'] / 1e6:.2f} MB | {r['ms'][0]:.2f} | {r['ms'][1]:.2f} | {r['speedup'][0]:.2f}x | "
                     f"{r['speedup'][1]:.2f}x |")
    lines.append("")
    if any(r["method"].startswith("magnitude") for r in report["rows"]):
        lines += ["Magnitude pruning stores its zeros dense: no smaller on disk and no faster with dense kernels.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], out_png: Path) -> Path:
    """Three panels, one bar per variant: the dev metric, size on disk, speed-up at batch 32."""
    from zerolm.eval.plots import pyplot

    plt = pyplot()
    rows, m = report["rows"], report["metric"]
    names = [r["name"] for r in rows]
    bn = report["batch_sizes"][-1]
    panels = [(m, [r["score"] or 0.0 for r in rows]), ("size on disk (MB)", [r["bytes"] / 1e6 for r in rows]),
              (f"speed-up at batch {bn} (x)", [r["speedup"][-1] for r in rows])]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(9.0, 0.6 * len(names) * len(panels)), 3.8), dpi=120)
    colors = ["#8C8C8C"] + ["#4C72B0"] * (len(rows) - 1)
    for ax, (label, values) in zip(axes, panels):
        bars = ax.bar(range(len(values)), values, color=colors)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        top = 1.0 if label == m and all(0 <= v <= 1 for v in values) else (max(values) * 1.15 or 1.0)
        ax.set_ylim(0, top)  # from 0, so bar heights compare honestly
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"compressed variants vs the original (latency at {report['threads']} thread"
                 f"{'s' * (report['threads'] != 1)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def write(report: dict[str, Any], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """report.md, report.json and report.png in `out` (new or empty, or `overwrite`); the
    plot is drawn first, under a temporary name, so a failure leaves no partial report."""
    out = check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    tmp_png = out / f".report.tmp-{os.getpid()}.png"
    try:
        plot(report, tmp_png)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        atomic_write_text(out / "report.md", markdown(report))
        os.replace(tmp_png, out / "report.png")
    finally:
        tmp_png.unlink(missing_ok=True)
    return out
