"""Predictions of a fine-tuned model on a file: classes with probabilities, entity tags,
or generated completions, written as TSV or JSONL in the input's order.

The model directory is the best/ (or final/) folder of a `zerolm finetune` run; its
task.json says which task built it, and that task reads the inputs and decodes outputs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from zerolm.atomic import atomic_write_text
from zerolm.errors import ZeroLMError
from zerolm.generate import input_room

log = logging.getLogger(__name__)


def predict_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                 batch_size: int = 32, max_length: int | None = None, device: str = "cpu",
                 progress: bool | None = None) -> list[dict[str, Any]]:
    """Predict every input of `input_path` and write `output_path` (.tsv or .jsonl, or the
    task's own format such as CoNLL .txt for tagging); returns the output records."""
    from zerolm.tasks.base import to_device
    from zerolm.train.finetune import load_finetuned, task_module

    model, tok, task, meta = load_finetuned(model_dir, device=device)
    if tok is None:
        raise ZeroLMError(f"{model_dir}: no tokenizer beside the weights")
    mod = task_module(meta["task"])
    if hasattr(task, "tokenizer"):
        task.tokenizer = tok
    limit = min(max_length or model.config.max_seq_len, input_room(getattr(model, "body", model)))
    data, records = mod.prediction_data(input_path, tok, meta, max_length=limit, batch_size=batch_size)
    results: list[dict[str, Any] | None] = [None] * len(records)
    bar = _bar(len(records), progress)
    with torch.no_grad():
        for batch in data.eval_batches():
            index = batch.pop("index").tolist()
            for i, pred in zip(index, task.predict(model, to_device(batch, torch.device(device)))):
                results[i] = {**records[i], **pred}
            if bar is not None:
                bar.update(len(index))
    if bar is not None:
        bar.close()
    out = [r for r in results if r is not None]
    write_records(out, output_path, writer=getattr(mod, "write_predictions", None))
    return out


def _bar(total: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="example", dynamic_ncols=True)


def write_records(records: list[dict[str, Any]], path: str | Path, writer=None) -> Path:
    """JSONL (one object per line) for .jsonl; otherwise TSV with a header, nested values
    flattened (probs -> prob_<label> columns, lists joined by spaces). A task may supply
    its own `writer(records, path) -> str | None` (e.g. CoNLL for tagging)."""
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
            out.update({f"prob_{n}" if k == "probs" else f"{k}_{n}": f"{x}" for n, x in v.items()})
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
