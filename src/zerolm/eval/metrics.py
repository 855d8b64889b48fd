"""Classification metrics: per-class precision / recall / F1 with support, macro,
micro and weighted averages, and the confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n: int) -> np.ndarray:
    """(n, n) counts: rows are true classes, columns predicted ones."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def _prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification_report(y_true, y_pred, names: list[str]) -> dict:
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    support = cm.sum(1)
    per = {}
    for i, name in enumerate(names):
        p, r, f = _prf(tp[i], fp[i], fn[i])
        per[name] = {"precision": p, "recall": r, "f1": f, "support": int(support[i])}
    total = int(support.sum())
    macro = {k: float(np.mean([per[n][k] for n in names])) for k in ("precision", "recall", "f1")}
    weighted = {k: float(sum(per[n][k] * per[n]["support"] for n in names) / max(total, 1))
                for k in ("precision", "recall", "f1")}
    mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
    return {"accuracy": float(tp.sum() / max(total, 1)), "per_class": per,
            "macro": {**macro, "support": total}, "micro": {"precision": mp, "recall": mr, "f1": mf,
                                                             "support": total},
            "weighted": {**weighted, "support": total}, "confusion_matrix": cm.tolist(), "labels": names}


def format_report(rep: dict) -> str:
    names = rep["labels"]
    w = max(12, *(len(n) for n in names))
    lines = [f"{'':<{w}}  precision  recall      f1  support"]
    for n in names:
        r = rep["per_class"][n]
        lines.append(f"{n:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    lines.append("")
    for avg in ("micro", "macro", "weighted"):
        r = rep[avg]
        lines.append(f"{avg + ' avg':<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    lines.append(f"{'accuracy':<{w}}  {rep['accuracy']:.4f}")
    return "\n".join(lines)
