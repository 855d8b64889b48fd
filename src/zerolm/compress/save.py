"""Write a compressed model as a model directory every command loads (weights, config with
the new per-layer shapes, tokenizer, task.json), plus compress.json: what was done to it.
compress.json's "quantization" entry is also what loading reads to rebuild int8 modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from zerolm.compress.quant import quantization_record, replay_quantization
from zerolm.errors import CheckpointError, ConfigError
from zerolm.modeldir import MODEL_FILE, TASK_FILE, save_model

RECORD_FILE = "compress.json"


def check_out_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """`out` if a model may be written there: absent, empty, or `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out, or pass --overwrite to replace it")
    return out


def save_compressed(model: nn.Module, out: str | os.PathLike, *, tokenizer=None, meta: dict | None = None,
                    record: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` to `out` atomically (all or nothing): its weights and config, the
    tokenizer, a fine-tuned model's task.json (`meta`) and compress.json (`record`)."""
    out = check_out_dir(out, overwrite)
    extra = {}
    if meta:
        extra[TASK_FILE] = json.dumps(meta, indent=2)
    quant = quantization_record(model)  # read from the model itself: whoever quantized it
    if quant is not None:
        record = {**(record or {}), "quantization": quant}
    if record is not None:
        extra[RECORD_FILE] = json.dumps(record, indent=2, default=str)
    return save_model(model, out, tokenizer=tokenizer, extra_files=extra)


def read_record(directory: str | os.PathLike) -> dict | None:
    """compress.json of a model directory (or of a run's best/ or final/), None when the
    model was not made by `zerolm compress`."""
    d = Path(directory)
    for where in (d, d / "best", d / "final"):
        path = where / RECORD_FILE
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise CheckpointError(f"{path}: unreadable compression record ({e})") from None
            return record if isinstance(record, dict) else None
    return None


def method_chain(record: dict | None) -> str:
    """"prune-ffn + recovery -> int8-dynamic": every step that made a model, oldest first,
    following each record's `previous` (the source model's own record)."""
    steps = []
    while record:
        steps.append(record.get("method", "?") + (" + recovery" if record.get("recovery") else ""))
        record = record.get("previous")
    return " -> ".join(reversed(steps))


def replay_saved(model: nn.Module, directory: str | os.PathLike) -> None:
    """Put back the int8 modules recorded in `directory`'s compress.json (if any) in place of
    the fp32 ones of `model`, freshly built from the directory's config, before its
    weights load (zerolm.loading calls this, as it replays a PEFT strategy)."""
    path = Path(directory) / RECORD_FILE
    if not path.exists():
        return
    try:
        quant = json.loads(path.read_text(encoding="utf-8")).get("quantization")
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable compression record ({e})") from None
    if quant is not None:
        replay_quantization(model, quant, str(path))


def dir_bytes(directory: str | os.PathLike) -> int:
    """Bytes of the files under `directory`."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def weight_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes of the weight file of a zerolm model directory (None when there is none)."""
    p = Path(directory) / MODEL_FILE
    return p.stat().st_size if p.exists() else None
