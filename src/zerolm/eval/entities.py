"""Entity-level precision / recall / F1 for tagging, the numbers NER papers report.

An entity counts as found only when its type, first and last word all match: a PER
predicted over one word of a two-word name is both a false positive and a false
negative. The numbers are those of `seqeval.metrics.classification_report(y_true,
y_pred, output_dict=True)` in its default mode, which reads tags as the CoNLL shared
task's conlleval script does: an ill-formed `I-X` (after `O` or after another type)
starts a new entity instead of being an error, so a tagger is not scored on a cleaned-up
version of what it produced. seqeval is not a dependency; a test checks the equality.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

Entity = tuple[str, int, int]  # (type, first word, last word), last inclusive


def _split(tag: str) -> tuple[str, str]:
    """("B" | "I" | "O", type) of an IOB tag; "O" has the type "_" as in conlleval."""
    if tag == "O":
        return "O", "_"
    if len(tag) < 3 or tag[:2] not in ("B-", "I-"):
        raise ValueError(f"not an IOB tag: {tag!r} (expected O, B-TYPE or I-TYPE)")
    return tag[0], tag[2:]


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one sentence's tags, chunked as conlleval does.

    A chunk ends before a word when the previous word was inside one (B or I) and this
    word is B, O, or of another type; a chunk starts at every B, at an I after O, and at
    any non-O word whose type differs from the previous word's.
    """
    out: list[Entity] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # the extra O closes a chunk at the end
        kind, etype = _split(tag)
        if prev in ("B", "I") and (kind in ("B", "O") or prev_type != etype):
            out.append((prev_type, begin, i - 1))
        if kind == "B" or (kind == "I" and (prev == "O" or prev_type != etype)):
            begin = i
        prev, prev_type = kind, etype
    return out


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1; 0 where undefined (seqeval's zero_division='warn')."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def entity_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
    """Per-type and averaged precision / recall / F1 and support (gold entities).

    Returns {"per_type": {type: {"precision", "recall", "f1", "support"}}, "micro": ...,
    "macro": ..., "weighted": ...}, types sorted by name, covering every type that is in
    the gold or the predicted tags. Micro pools the counts of all types (the headline
    CoNLL F1); macro is the unweighted mean over types; weighted weighs each type by its
    support. With no entity anywhere, macro is 0 where seqeval gives NaN.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted ones")
    gold: dict[str, set] = defaultdict(set)
    pred: dict[str, set] = defaultdict(set)
    for s, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {s}: {len(t)} gold tags but {len(p)} predicted ones")
        for etype, a, b in entities(t):
            gold[etype].add((s, a, b))
        for etype, a, b in entities(p):
            pred[etype].add((s, a, b))
    per = {}
    for etype in sorted(set(gold) | set(pred)):
        tp = len(gold[etype] & pred[etype])
        p, r, f = _prf(tp, len(pred[etype]), len(gold[etype]))
        per[etype] = {"precision": p, "recall": r, "f1": f, "support": len(gold[etype])}
    support = sum(v["support"] for v in per.values())
    tp_all = sum(len(gold[t] & pred[t]) for t in per)
    mp, mr, mf = _prf(tp_all, sum(len(pred[t]) for t in per), support)
    keys = ("precision", "recall", "f1")
    macro = {k: sum(v[k] for v in per.values()) / len(per) if per else 0.0 for k in keys}
    weighted = {k: sum(v[k] * v["support"] for v in per.values()) / support if support else 0.0
                for k in keys}
    return {"per_type": per,
            "micro": {"precision": mp, "recall": mr, "f1": mf, "support": support},
            "macro": {**macro, "support": support},
            "weighted": {**weighted, "support": support}}


def format_entity_report(rep: dict) -> str:
    """The report as a table, like seqeval's classification_report text."""
    names = list(rep["per_type"])
    w = max(12, *(len(n) for n in names)) if names else 12
    lines = [f"{'':<{w}}  precision  recall      f1  support"]
    rows = [(n, rep["per_type"][n]) for n in names] + [(None, None)]
    rows += [(f"{avg} avg", rep[avg]) for avg in ("micro", "macro", "weighted")]
    for name, r in rows:
        if name is None:
            lines.append("")
            continue
        lines.append(f"{name:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  "
                     f"{r['support']:7d}")
    return "\n".join(lines)
