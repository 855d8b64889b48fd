"""Predictions of a fine-tuned model on a file: classes with probabilities, entity tags,
or generated completions, written as TSV or JSONL in the input's order.

Every input column is kept as it was; the prediction goes into new columns
(`pred_label` and `prob_<class>`, `pred_tags`, `pred_completion`). The model is loaded
with `zerolm.load`, and the task reads the inputs and shapes the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zerolm.atomic import atomic_write_text
from zerolm.errors import ZeroLMError


def predict_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                 batch_size: int = 32, max_length: int | None = None, device: str = "cpu",
                 progress: bool | None = None, predictor=None) -> list[dict[str, Any]]:
    """Predict every input of `input_path` and write `output_path` (.tsv or .jsonl, or the
    task's own format such as CoNLL .txt for tagging); returns the output records."""
    from zerolm.loading import load

    pred = predictor or load(model_dir, device=device)
    task = pred.need_task("predict")
    if max_length is not None:
        max_length = min(max_length, task.max_length)
    inputs, rows = task.read_inputs(input_path)
    data = task.batches(inputs, batch_size=batch_size, max_length=max_length)
    preds = pred.predict_batches(data, progress=progress)
    records = []
    for row, p in zip(rows, preds):
        new = task.output_columns(p)
        clash = sorted(set(new) & set(row))
        if clash:
            raise ZeroLMError(f"{input_path}: the input already has column(s) {', '.join(clash)}, which "
                              f"the predictions would overwrite; rename them in the input")
        records.append({**row, **new})
    write_records(records, output_path, writer=task.write_predictions)
    return records


def write_records(records: list[dict[str, Any]], path: str | Path, writer=None) -> Path:
    """JSONL (one object per line) for .jsonl; otherwise TSV with a header, lists joined
    by spaces, nested mappings flattened (`key_name`). A task may supply its own
    `writer(records, path) -> str | None` (e.g. CoNLL for tagging)."""
    path = Path(path)
    text = writer(records, path) if writer is not None else None
    if text is None:
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        elif path.suffix in (".tsv", ".txt", ""):
            text = _tsv(records)
        else:
            raise ZeroLMError(f"{path}: unsupported output format (use .tsv or .jsonl)")
    atomic_write_text(path, text)
    return path


def _flat(rec: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update({f"{k}_{n}": f"{x}" for n, x in v.items()})
        elif isinstance(v, list):
            out[k] = " ".join(map(str, v))
        else:
            out[k] = str(v).replace("\t", " ").replace("\n", "\\n")
    return out


def _tsv(records: list[dict[str, Any]]) -> str:
    rows = [_flat(r) for r in records]
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["\t".join(cols)] + ["\t".join(r.get(c, "") for c in cols) for r in rows]
    return "\n".join(lines) + "\n"
