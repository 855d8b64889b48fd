"""Saving and loading models and resumable training state.

Layout of a model directory (what `generate`, `eval` and fine-tuning load):
    model.safetensors   weights (tied copies stored once, re-tied on load)
    model_config.json   the ModelConfig
    config.yaml         the run config that produced it (when there is one)
    tokenizer/          the tokenizer

A resumable checkpoint adds `optimizer.safetensors` (AdamW moments and RNG states) and
`trainer_state.json` (step, best metric, patience...). Every directory is written to a
temporary sibling and renamed into place, so a crash never leaves half a checkpoint and
never touches the previous good one. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zerolm.errors import CheckpointError
from zerolm.models import ModelConfig, build_model

MODEL_FILE = "model.safetensors"
MODEL_CONFIG = "model_config.json"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class AtomicDir:
    """`with AtomicDir(final) as tmp:` write into tmp; on success tmp replaces final."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _dedup_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor stored once, and the map alias -> stored key."""
    out, tied, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if ptr in seen:
            tied[k] = seen[ptr]
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous().cpu()
    return out, tied


def save_weights(model: nn.Module, path: Path, extra_meta: dict[str, str] | None = None) -> None:
    sd, tied = _dedup_state_dict(model)
    meta = {"format": "pt", "zerolm_tied": json.dumps(tied), **(extra_meta or {})}
    save_file(sd, str(path), metadata=meta)


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights into `model`, naming the file and key of any mismatch."""
    if not path.exists():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: shape mismatch for '{k}': file {tuple(v.shape)}, "
                                  f"model {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # tied aliases are absent from the file by design
    tied_targets = set(sd)
    missing = [k for k in missing if not _is_tied_alias(model, k, tied_targets)]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


def _is_tied_alias(model: nn.Module, key: str, stored: set[str]) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    target = params[key]
    return any(params.get(s) is target for s in stored)


def save_model(model: nn.Module, directory: str | os.PathLike, *, run_config: str | None = None,
               tokenizer=None) -> Path:
    """Write a complete model directory atomically (see the module docstring)."""
    directory = Path(directory)
    with AtomicDir(directory) as tmp:
        _write_model_files(model, tmp, run_config, tokenizer)
    return directory


def _write_model_files(model, tmp: Path, run_config: str | None, tokenizer) -> None:
    save_weights(model, tmp / MODEL_FILE)
    (tmp / MODEL_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    if run_config is not None:
        (tmp / "config.yaml").write_text(run_config)
    if tokenizer is not None:
        tokenizer.save(tmp / "tokenizer")


def load_model_config(directory: str | os.PathLike) -> ModelConfig:
    p = Path(directory) / MODEL_CONFIG
    if not p.exists():
        raise CheckpointError(f"{directory}: not a zerolm model directory (no {MODEL_CONFIG})")
    try:
        return ModelConfig.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: {e}") from None


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model, tokenizer or None) from a zerolm model directory or a local Hugging Face
    model directory (recognised by its config.json; converted on the fly)."""
    from zerolm.tokenizers import Tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    from zerolm.convert.hf import is_hf_dir, load_hf

    if is_hf_dir(directory):
        return load_hf(directory, device)
    cfg = load_model_config(directory)
    model = build_model(cfg)
    load_weights(model, directory / MODEL_FILE)
    tok = Tokenizer.load(directory / "tokenizer") if (directory / "tokenizer").exists() else None
    return model.to(device).eval(), tok


# ------------------------------------------------------------------ resumable state


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
        _write_model_files(model, tmp, run_config, tokenizer)
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
