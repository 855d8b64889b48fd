"""zerolm model directories: weights, config and tokenizer, saved and loaded.

Layout of a model directory (what `generate`, `eval`, `predict` and fine-tuning load):
    model.safetensors   weights (tied copies stored once, re-tied on load)
    model_config.json   the ModelConfig (per-layer shapes included)
    config.yaml         the run config that produced it (when there is one)
    task.json           a fine-tuned model's task head and strategy (when there is one)
    tokenizer/          the tokenizer

Directories are written to a temporary sibling and renamed into place (zerolm.atomic).
No pickle anywhere. This module sits below training and conversion: both use it, it
uses neither.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zerolm.atomic import AtomicDir
from zerolm.errors import CheckpointError
from zerolm.models import ModelConfig, build_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TASK_FILE = "task.json"


def _dedup_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with each shared tensor stored once, and the map alias -> stored key."""
    out, tied, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        # empty tensors (a block whose heads or neurons were all pruned) share the null data
        # pointer without being tied: each is stored under its own name
        if ptr in seen and v.numel():
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
    sd = upgrade_state_dict(sd, set(own), str(path))
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


# weight names of zerolm before the one-body-interface layout (2026-11-29): the pretraining
# models held the body at the top (GPT) or as `bert`, a soft prompt lived in the token
# embedding and prefixes in each attention
_LEGACY = [
    (re.compile(r"^bert\."), "body."),
    (re.compile(r"^(tok_emb|pos_emb|blocks|final_norm)\."), r"body.\1."),
    (re.compile(r"(^|\.)tok_emb\.prompt$"), r"\1soft_prompt.weight"),
    (re.compile(r"(^|\.)blocks\.(\d+)\.attn\.prefix_k$"), r"\1prefix_kv.keys.\2"),
    (re.compile(r"(^|\.)blocks\.(\d+)\.attn\.prefix_v$"), r"\1prefix_kv.values.\2"),
]


def upgrade_state_dict(sd: dict[str, torch.Tensor], wanted: set[str], source: str = "weights"
                       ) -> dict[str, torch.Tensor]:
    """Weights saved by an earlier zerolm, renamed to today's module names (a warning says
    so); weights already in today's names are returned as they are."""
    if not set(sd) - wanted:
        return sd
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for k, v in sd.items():
        new = k
        if new not in wanted:
            for pattern, repl in _LEGACY:
                new = pattern.sub(repl, new)
        if new != k:
            renamed += 1
        if new.endswith("lm_head.weight") and new not in wanted and new.startswith("body."):
            renamed += 1  # a GPT task model of old kept the (tied) LM head inside its body: unused
            continue
        out[new] = v
    if renamed:
        log.warning("%s: weights saved by an earlier zerolm; %d names upgraded to the current "
                    "layout (save the model again to keep them so)", source, renamed)
    return out


def _is_tied_alias(model: nn.Module, key: str, stored: set[str]) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    target = params[key]
    return any(params.get(s) is target for s in stored)


def save_model(model: nn.Module, directory: str | os.PathLike, *, run_config: str | None = None,
               tokenizer=None, extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete model directory atomically (see the module docstring);
    `extra_files` (name -> text) go in with it, e.g. a fine-tuned model's task.json."""
    directory = Path(directory)
    with AtomicDir(directory) as tmp:
        write_model_files(model, tmp, run_config, tokenizer, extra_files)
    return directory


def write_model_files(model, tmp: Path, run_config: str | None, tokenizer,
                      extra_files: dict[str, str] | None = None) -> None:
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
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


def load_zerolm_model(directory: str | os.PathLike, device: str | torch.device = "cpu",
                      prepare: Callable[[nn.Module], None] | None = None):
    """(pretraining model, tokenizer or None) from a zerolm model directory. `prepare`
    changes the freshly built model before its weights load (e.g. puts back int8 modules)."""
    from zerolm.tokenizers import Tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    cfg = load_model_config(directory)
    model = build_model(cfg)
    if prepare is not None:
        prepare(model)
    load_weights(model, directory / MODEL_FILE)
    tok = Tokenizer.load(directory / "tokenizer") if (directory / "tokenizer").exists() else None
    return model.to(device).eval(), tok
