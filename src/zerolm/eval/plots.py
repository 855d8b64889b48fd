"""Plots users look at, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_percent(p: float) -> str:
    """A share in percent, as a reader would write it: 100%, 12.3%, 0.6%, 0.02%, 0.0013%
    (two significant digits below 10, three above; never scientific notation)."""
    if p == 0 or not math.isfinite(p):
        return f"{p:g}%"
    digits = (3 if abs(p) >= 10 else 2) - 1 - math.floor(math.log10(abs(p)))
    text = f"{round(p, max(digits, 0)):.{max(digits, 0)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def plot_loss_curve(metrics_jsonl: str | Path, out_png: str | Path, title: str | None = None,
                    loss_unit: str = "nats / token") -> Path:
    """Training loss (and validation loss where evaluated) against the step. `loss_unit`
    is what one loss value averages over: the task's `loss_unit` ("nats / example" for
    classification, "nats / word" for tagging)."""
    rows = [json.loads(ln) for ln in Path(metrics_jsonl).read_text().splitlines() if ln.strip()]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if va:
        ax.plot(*zip(*va), "o-", label="validation loss", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({loss_unit})" if loss_unit else "loss")
    ax.set_title(title or Path(metrics_jsonl).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def plot_confusion_matrix(cm, labels: list[str], out_png: str | Path, title: str = "confusion matrix",
                          drop_empty: bool = False) -> Path:
    """Counts and row-normalised colours (recall per true class). Past 12 classes the
    zero cells stay blank, so the errors stand out; `drop_empty` leaves out the classes
    that are neither in the data nor predicted (ATIS dev lacks several training intents)."""
    import numpy as np

    cm = np.asarray(cm)
    if drop_empty:
        keep = [i for i in range(len(labels)) if cm[i].sum() or cm[:, i].sum()]
        cm, labels = cm[np.ix_(keep, keep)], [labels[i] for i in keep]
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    plt = pyplot()
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    many = len(labels) > 12
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j] or not many:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=7 if many else 8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def metric_axis_limits(values: list[float]) -> tuple[float, float]:
    """The value axis of a bar chart: from 0 (bars compare by height only when they start at
    0; 0.53 vs 0.55 must not look like 1 vs 3), with room above the tallest bar for its
    labels. Scores in [0, 1] (accuracy, F1) get the whole scale."""
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    if lo >= 0 and hi <= 1:
        return 0.0, 1.3
    if lo >= 0:  # perplexity and the like
        return 0.0, hi * 1.3
    pad = (max(hi, 0.0) - lo) * 0.3  # a negative metric: the bars hang from 0
    return lo - pad, max(hi, 0.0) + pad


def plot_strategy_comparison(rows: list[dict], out_png: str | Path, title: str = "") -> Path:
    """One bar per fine-tuning strategy: the headline metric, labelled with the share of
    parameters trained and the wall time. The metric axis starts at 0, so bar heights
    compare honestly (a score in [0, 1] gets the axis 0 to 1)."""
    plt = pyplot()
    names = [r["strategy"] for r in rows]
    values = [r["value"] for r in rows]
    metric = rows[0]["metric"] if rows else ""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.2), dpi=120)
    bars = ax.bar(names, values, color="#4C72B0")
    ax.set_ylim(*metric_axis_limits(values))
    if all(0 <= v <= 1 for v in values):
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    for b, r in zip(bars, rows):
        label = f"{r['value']:.4f}\n{format_percent(r['percent'])} trained\n{r['wall_s']:.0f} s"
        ax.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=7)
    lower_better = metric in ("perplexity", "loss") or metric.endswith("_loss")
    ax.set_ylabel(f"{metric} ({'lower' if lower_better else 'higher'} is better)" if metric else "")
    ax.set_title(f"fine-tuning strategies: {title}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def plot_entity_scores(per_type: dict[str, dict], out_png: str | Path, title: str = "entities") -> Path:
    """Precision, recall and F1 of each entity type side by side, with the number of gold
    entities under each type: which types the tagger misses, and whether by over- or
    under-predicting them."""
    import numpy as np

    names = list(per_type)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 2), 4.2), dpi=120)
    x = np.arange(len(names))
    for k, (metric, color) in enumerate([("precision", "#4C72B0"), ("recall", "#DD8452"), ("f1", "#55A868")]):
        vals = [per_type[n][metric] for n in names]
        bars = ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=metric, color=color)
        if metric == "f1":
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{n}\n({per_type[n]['support']})" for n in names])
    ax.set_ylim(0, 1.2)  # room above 1 for the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def plot_oos_scores(oos: dict, out_png: str | Path, title: str = "") -> Path:
    """How the out-of-scope score separates in-scope from out-of-scope queries: the share
    of each group per score bin (the groups differ in size by 30x on CLINC150, so counts
    would hide the oos one), with the threshold as a vertical line. `oos` is the "oos"
    section of a classification report (zerolm.eval.oos)."""
    import numpy as np

    h = oos["histogram"]
    edges = np.asarray(h["edges"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, name, color in (("in_scope", "in scope", "#4C72B0"), ("oos", "out of scope", "#DD8452")):
        counts = np.asarray(h[key], dtype=float)
        if counts.sum():
            ax.stairs(counts / counts.sum(), edges, fill=True, alpha=0.45, color=color,
                      label=f"{name} ({int(counts.sum())})")
    if oos.get("threshold") is not None:
        ax.axvline(oos["threshold"], color="black", ls="--", lw=1.2, label=f"threshold {oos['threshold']:.4g}")
    kind = {"msp": "1 - max in-scope probability", "energy": "energy (-logsumexp of in-scope logits)"}
    ax.set_xlabel(f"out-of-scope score: {kind.get(oos['score'], oos['score'])}")
    ax.set_ylabel("share of the group")
    auroc = oos.get("auroc")
    ax.set_title(f"{title}: out-of-scope score" + ("" if auroc is None else f", AUROC {auroc:.4f}"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
