"""Out-of-scope (OOS) detection for intent classifiers: the scores, the threshold
calibration, and the figures the CLINC150 paper reports (Larson et al., EMNLP 2019).

A query is out of scope when the classifier predicts the explicit out-of-scope class
(when it was trained with one), or when its out-of-scope score is above a threshold.
Every score here reads the same way: **higher means more likely out of scope**.

- `msp`: 1 - the maximum softmax probability of an in-scope class (Hendrycks & Gimpel,
  2017). With an explicit oos class the softmax still covers it, so mass the model puts
  on `oos` raises the score.
- `energy`: -T * logsumexp(logits / T) over the in-scope classes' logits, T = 1 (Liu et
  al., 2020). The oos logit is left out: a large oos logit must not make a query look
  *more* in scope.

Calibration places candidate thresholds halfway between consecutive distinct scores of
the calibration set (plus one below all of them and one at the top, which flags nothing)
and picks by one of two rules:

- `balanced` (the default): the threshold that maximises in-scope accuracy + oos recall
  (needs out-of-scope examples); ties go to the highest threshold, which flags fewest.
- `in_scope_recall` r: the lowest threshold that keeps at least a share r of the
  in-scope examples in scope (needs no out-of-scope examples).

Metrics: in-scope accuracy is over the in-scope examples, with an out-of-scope
decision counted wrong; oos recall and precision treat "out of scope" as the positive
class; AUROC is that of the score, oos examples positive (ties count one half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

SCORES = ("msp", "energy")
# the label of an out-of-scope example for a model with no oos class (it is trained on
# in-scope data only): cross-entropy's default ignore_index, so losses skip it
NO_CLASS = -100

Rule = Literal["balanced", "in_scope_recall"]


@dataclass
class OutOfScope:
    """How a classifier decides out of scope; saved in task.json under "oos"."""

    label: str  # what predictions call an out-of-scope query, and its label in the data
    oos_index: int | None  # the oos class's index among the model's classes; None: no such class
    score: str = "msp"  # a name in SCORES
    threshold: float | None = None  # out of scope above it; None: the oos class alone decides
    rule: Rule | None = None  # set while fine-tuning: calibrate the threshold on each evaluation
    target: float | None = None  # rule in_scope_recall: the share of in-scope queries to keep

    def to_meta(self) -> dict[str, Any]:
        return {"label": self.label, "class": self.oos_index is not None, "score": self.score,
                "threshold": self.threshold, "rule": self.rule, "target": self.target}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], label_names: list[str]) -> OutOfScope:
        idx = label_names.index(meta["label"]) if meta.get("class") else None
        return cls(meta["label"], idx, meta.get("score", "msp"), meta.get("threshold"))

    def describe_rule(self) -> str:
        if self.rule == "in_scope_recall":
            return f"auto: the lowest threshold keeping >= {self.target:g} of in-scope queries in scope"
        if self.rule == "balanced":
            return "auto: the threshold maximising in-scope accuracy + oos recall"
        return "none (the oos class alone)" if self.threshold is None else f"fixed: {self.threshold:g}"


def oos_scores(logits: torch.Tensor, kind: str, oos_index: int | None = None) -> torch.Tensor:
    """(N,) out-of-scope scores of (N, C) logits; higher is more likely out of scope."""
    logits = logits.float()
    keep = in_scope_columns(logits.shape[-1], oos_index)
    if kind == "msp":
        return 1.0 - logits.softmax(-1)[:, keep].max(-1).values
    if kind == "energy":
        return -torch.logsumexp(logits[:, keep], dim=-1)  # T = 1
    raise ValueError(f"unknown out-of-scope score {kind!r}; choose from {list(SCORES)}")


def in_scope_columns(n_classes: int, oos_index: int | None) -> list[int]:
    return [c for c in range(n_classes) if c != oos_index]


def best_in_scope(probs: torch.Tensor, oos_index: int | None) -> torch.Tensor:
    """(N,) index of the most probable in-scope class of (N, C) probabilities (or logits)."""
    if oos_index is None:
        return probs.argmax(-1)
    masked = probs.clone()
    masked[:, oos_index] = -math.inf
    return masked.argmax(-1)


def decide(scores: np.ndarray, predicted_oos_class: np.ndarray, threshold: float | None) -> np.ndarray:
    """(N,) bool: out of scope when the oos class is predicted or the score is above the threshold."""
    out = np.asarray(predicted_oos_class, dtype=bool).copy()
    if threshold is not None:
        out |= np.asarray(scores) > threshold
    return out


def auroc(scores, is_oos) -> float | None:
    """Area under the ROC curve of `scores` separating oos (positive) from in-scope
    examples: the probability that a random oos example scores higher than a random
    in-scope one, ties counting one half (the Mann-Whitney U statistic). None when one
    of the two groups is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_oos, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average 1-based ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """One below every score (flags all), halfway between consecutive distinct scores, and
    the highest score (with "above the threshold", flags none)."""
    u = np.unique(np.asarray(scores, dtype=np.float64))
    if not len(u):
        return np.array([0.0])
    return np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2, u[-1]]


def calibrate(scores, correct, is_oos, predicted_oos_class, *, rule: Rule = "balanced",
              target: float | None = None) -> float:
    """The threshold `rule` picks on a calibration set (see the module docstring).

    scores: (N,) out-of-scope scores; correct: (N,) the best in-scope class is the true one
    (read for in-scope examples only); is_oos: (N,) the example is out of scope;
    predicted_oos_class: (N,) the model predicted its oos class (out of scope whatever the
    threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_oos, dtype=bool)
    forced = np.asarray(predicted_oos_class, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    cands = candidate_thresholds(s)
    n_in, n_oos = int((~y).sum()), int(y.sum())
    # in-scope examples kept in scope at each threshold: not forced and score <= t
    kept_all = np.sort(s[~y & ~forced])
    kept = np.searchsorted(kept_all, cands, side="right")
    if rule == "in_scope_recall":
        if target is None:
            raise ValueError("rule in_scope_recall needs a target share")
        meets = kept >= math.ceil(target * n_in - 1e-9)
        # the forced oos predictions alone may already cost more in-scope recall than allowed:
        # then the threshold flags nothing
        return float(cands[np.argmax(meets)] if meets.any() else cands[-1])
    if rule != "balanced":
        raise ValueError(f"unknown calibration rule {rule!r}")
    kept_correct = np.searchsorted(np.sort(s[~y & ~forced & ok]), cands, side="right")
    oos_free = np.sort(s[y & ~forced])
    flagged = (y & forced).sum() + len(oos_free) - np.searchsorted(oos_free, cands, side="right")
    objective = kept_correct / max(n_in, 1) + (flagged / n_oos if n_oos else 0.0)
    best = objective.max()
    return float(cands[np.flatnonzero(objective >= best - 1e-12)[-1]])  # ties: the highest


def oos_metrics(is_oos, decided_oos, correct) -> dict[str, Any]:
    """In-scope accuracy, oos recall / precision / F1 and the counts (None where undefined)."""
    y = np.asarray(is_oos, dtype=bool)
    d = np.asarray(decided_oos, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    n_in, n_oos, n_flagged = int((~y).sum()), int(y.sum()), int(d.sum())
    tp = int((y & d).sum())
    recall = tp / n_oos if n_oos else None
    precision = tp / n_flagged if n_flagged else None
    f1 = None if recall is None or precision is None else \
        (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {"in_scope_accuracy": float((~y & ~d & ok).sum() / n_in) if n_in else None,
            "in_scope_recall": float((~y & ~d).sum() / n_in) if n_in else None,
            "oos_recall": recall, "oos_precision": precision, "oos_f1": f1,
            "n_in_scope": n_in, "n_oos": n_oos, "n_flagged": n_flagged}


def cross_calibrate(scores, correct, is_oos, predicted_oos_class, folds, *, rule: Rule = "balanced",
                    target: float | None = None) -> tuple[np.ndarray, list[float]]:
    """Decisions judged honestly on the calibration data itself: the examples of each fold
    get the threshold calibrated on the other folds (never on themselves). Returns the (N,)
    decisions and the threshold of each fold."""
    s, ok, y, forced = (np.asarray(a) for a in (scores, correct, is_oos, predicted_oos_class))
    folds = np.asarray(folds)
    decided = np.zeros(len(s), dtype=bool)
    thresholds = []
    for f in np.unique(folds):
        rest = folds != f
        t = calibrate(s[rest], ok[rest], y[rest], forced[rest], rule=rule, target=target)
        here = folds == f
        decided[here] = decide(s[here], forced[here], t)
        thresholds.append(t)
    return decided, thresholds


def score_histogram(scores, is_oos, bins: int = 40) -> dict[str, list]:
    """Counts of in-scope and oos scores over shared bins (what the histogram plot draws;
    small enough for eval.json)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_oos, dtype=bool)
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges],
            "in_scope": np.histogram(s[~y], edges)[0].tolist(), "oos": np.histogram(s[y], edges)[0].tolist()}


def format_oos_report(oos: dict[str, Any]) -> str:
    """The out-of-scope section of a classification report, as text."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    t = oos.get("threshold")
    lines = [f"out of scope ({oos['label']!r}: {'an explicit class' if oos['class'] else 'no class'}"
             f"{'' if t is None else ' + threshold'}): score {oos['score']}, threshold "
             f"{'none' if t is None else f'{t:.6g}'} ({oos['calibration']})",
             f"  measured: {oos['measured']}",
             f"  in-scope accuracy {pct(oos['in_scope_accuracy'])}   oos recall {pct(oos['oos_recall'])}   "
             f"oos precision {pct(oos['oos_precision'])}   AUROC {pct(oos['auroc'])}   "
             f"({oos['n_in_scope']} in-scope, {oos['n_oos']} oos)"]
    same = oos.get("same_set")
    if same:
        lines.append(f"  calibrated and measured on the same examples (optimistic): in-scope accuracy "
                     f"{pct(same['in_scope_accuracy'])}   oos recall {pct(same['oos_recall'])}   "
                     f"oos precision {pct(same['oos_precision'])}")
    return "\n".join(lines)
