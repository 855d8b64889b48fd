"""Side-by-side comparison of fine-tuning strategies on one task.

Each strategy is one ordinary `zerolm finetune` run of the same config (its own
process, so peak memory is its own), written to ROOT/<strategy>/, where ROOT is the
`out_dir` given (`zerolm compare --out-dir ROOT`) or else <the config's out_dir>/compare.
A strategy whose eval.json already exists is read back instead of retrained, so an
interrupted comparison picks up where it stopped. The table (Markdown + JSON) and a bar
chart go to ROOT.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from zerolm.atomic import atomic_write_text
from zerolm.errors import ZeroLMError
from zerolm.eval.plots import format_percent

log = logging.getLogger(__name__)


def split_overrides(overrides: list[str], strategies: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Common overrides, and per-strategy ones written `STRATEGY:key=value`
    (e.g. `lora:optim.lr=1e-3`)."""
    common: list[str] = []
    per: dict[str, list[str]] = {s: [] for s in strategies}
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and "=" not in head:
            if head not in per:
                raise ZeroLMError(f"override {o!r} names strategy {head!r}, which is not compared "
                                  f"({', '.join(strategies)})")
            per[head].append(rest)
        else:
            common.append(o)
    return common, per


def headline(report: dict[str, Any]) -> tuple[str, float]:
    """The task's headline metric (accuracy, entity F1, perplexity) and its value."""
    name = report.get("metric", "accuracy")
    value = report.get(name)
    if not isinstance(value, (int, float)):
        raise ZeroLMError(f"eval.json has no numeric {name!r}")
    return name, float(value)


def compare_root(config: str | Path, overrides: list[str] | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Where a comparison writes: `out_dir` itself when given, else <config out_dir>/compare."""
    from zerolm.config import FinetuneConfig, load_config

    if out_dir:
        return Path(out_dir)
    return Path(load_config(config, list(overrides or []), cls=FinetuneConfig).out_dir) / "compare"


def compare_strategies(config: str | Path, strategies: list[str], overrides: list[str] | None = None,
                       *, out_dir: str | Path | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Fine-tune `config` once per strategy into ROOT/<strategy>/ (see the module
    docstring for ROOT) and write the comparison there; returns one row per strategy."""
    from zerolm.config import FinetuneConfig, check_writable_dir, load_config
    from zerolm.peft import STRATEGIES

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ZeroLMError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    common, per = split_overrides(list(overrides or []), strategies)
    for s in strategies:  # fail on a bad key before hours of training, not after
        load_config(config, [*common, *per[s], f"strategy.name={s}"], cls=FinetuneConfig)
    root = check_writable_dir(compare_root(config, common, out_dir),
                              key="--out-dir" if out_dir else "out_dir")
    rows = []
    for s in strategies:
        run_dir = root / s
        report_path = run_dir / "eval.json"
        if force or not report_path.exists():
            cmd = [sys.executable, "-m", "zerolm.cli.main", "finetune", str(config), *common, *per[s],
                   f"strategy.name={s}", f"out_dir={run_dir}", *_run_mode(run_dir, force)]
            log.info("compare: training %s (%s)", s, " ".join(cmd[3:]))
            done = subprocess.run(cmd, env=os.environ.copy())
            if done.returncode != 0:
                raise ZeroLMError(f"compare: the {s} run failed (exit {done.returncode}); "
                                  f"its output is above and in {run_dir}")
        else:
            log.info("compare: %s already done, reading %s", s, report_path)
        report = json.loads(report_path.read_text())
        metric, value = headline(report)
        st = report["strategy"]
        rows.append({"strategy": s, "metric": metric, "value": value, "trainable": st["trainable"],
                     "total": st["total"], "percent": st["percent"], "wall_s": report["wall_s"],
                     "samples_per_s": report["samples_per_s"], "peak_rss_mb": report.get("peak_rss_mb"),
                     "overrides": per[s], "out_dir": str(run_dir)})
    write_comparison(rows, root, title=f"{Path(config).name}")
    return rows


def _run_mode(run_dir: Path, force: bool) -> list[str]:
    """How a strategy's run starts: afresh when forced or after an unfinished run that kept
    no checkpoint, resumed when an interrupted run left one, plainly in a new directory."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return []
    if not force and any((run_dir / "checkpoints").glob("step-*")):
        return ["--resume"]
    return ["--overwrite"]


def format_table(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["metric"] if rows else "metric"
    lines = [f"| strategy | {metric} | trainable params | trained | wall time (s) | samples/s "
             f"| peak memory (MiB) | overrides |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mem = f"{r['peak_rss_mb']:,.0f}" if r.get("peak_rss_mb") else "-"
        lines.append(f"| {r['strategy']} | {r['value']:.4f} | {r['trainable']:,} "
                     f"| {format_percent(r['percent'])} "
                     f"| {r['wall_s']:,.0f} | {r['samples_per_s']:.1f} | {mem} "
                     f"| {' '.join(r['overrides']) or '-'} |")
    return "\n".join(lines)


def write_comparison(rows: list[dict[str, Any]], root: Path, title: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "compare.md", f"# Strategies on {title}\n\n{format_table(rows)}\n")
    atomic_write_text(root / "compare.json", json.dumps(rows, indent=2))
    from zerolm.eval.plots import plot_strategy_comparison

    try:
        plot_strategy_comparison(rows, root / "compare.png", title=title)
    except Exception as e:  # a plot must never cost the results
        log.warning("could not draw the comparison chart: %s", e)
