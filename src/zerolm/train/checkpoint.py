"""Resumable training state: a model directory (zerolm.modeldir) plus
`optimizer.safetensors` (AdamW moments and RNG states) and `trainer_state.json` (step,
best metric, patience...). Every checkpoint is written to a temporary sibling and
renamed into place, so a crash never leaves half a checkpoint and never touches the
previous good one. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zerolm.atomic import AtomicDir
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
                    trainer_state: dict[str, Any], run_config: str, tokenizer=None) -> Path:
    """A resumable checkpoint: model directory + optimizer, RNG and trainer state."""
    with AtomicDir(directory) as tmp:
        write_model_files(model, tmp, run_config, tokenizer)
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / OPTIM_FILE), metadata={"optimizer": json.dumps(meta)})
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    return directory


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `directory`; return the trainer state."""
    load_weights(model, directory / MODEL_FILE)
    path = directory / OPTIM_FILE
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["optimizer"])
    except (SafetensorError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable optimizer state ({e})") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if states:
            torch.cuda.set_rng_state_all(states)
    return json.loads((directory / STATE_FILE).read_text())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (names are step-NNNNNNNN)."""
    if not root.exists():
        return []
    cks = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
           and (p / STATE_FILE).exists() and (p / OPTIM_FILE).exists()]
    return sorted(cks, key=lambda p: int(p.name.split("-")[1]))
