"""Resumable training state: a model directory (zerolm.modeldir) plus
`optimizer.safetensors` (AdamW moments and RNG states) and `trainer_state.json` (step,
best metric, patience...). Every checkpoint is written to a temporary sibling and
renamed into place, so a crash never leaves half a checkpoint and never touches the
previous good one. No pickle anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from zerolm.atomic import AtomicDir, recover_all
from zerolm.errors import CheckpointError
from zerolm.modeldir import MODEL_FILE, load_weights, write_model_files

OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], run_config: str, tokenizer=None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """A resumable checkpoint: model directory + optimizer, RNG and trainer state."""
    with AtomicDir(directory) as tmp:
        write_model_files(model, tmp, run_config, tokenizer, extra_files)
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / OPTIM_FILE), metadata={"optimizer": json.dumps(meta)})
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    return directory


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `directory`; return the trainer state.

    Raises CheckpointError naming the file when any part is missing or unreadable. The
    trainer state and the optimizer file are read before anything is changed, so a bad
    checkpoint leaves the optimizer and RNG as they were (the caller may try another).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    for name in (STATE_FILE, OPTIM_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing from the checkpoint")
    state = _read_state(directory / STATE_FILE)
    path = directory / OPTIM_FILE
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["optimizer"])
        rng = tensors["rng.torch"]
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable optimizer state ({e!r})") from None
    load_weights(model, directory / MODEL_FILE)
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model's trainable "
                              f"parameters ({e})") from None
    torch.set_rng_state(rng)
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    return state


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: trainer state without an integer 'step'")
    return state


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory named step-NNNNNNNN, None for any other name."""
    m = re.fullmatch(r"step-(\d+)", path.name)
    return int(m[1]) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root`, oldest first (names are step-NNNNNNNN).

    Whether each is readable is for `load_checkpoint` to say: a damaged one is listed, so
    that a resume can name it rather than skip it in silence. A checkpoint that an
    interrupted write left only as a hidden old copy is restored first (zerolm.atomic).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    recover_all(root)
    cks = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(cks, key=checkpoint_step)
