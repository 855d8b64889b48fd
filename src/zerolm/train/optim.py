"""AdamW (or Adafactor) with weight-decay groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from zerolm.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    `no_decay` names kinds kept out of weight decay: "bias" (any bias), "norm"
    (LayerNorm / RMSNorm weights), "embedding" (token, position and type tables; with
    tied weights the LM head goes with the embedding).
    """
    unknown = set(no_decay) - {"bias", "norm", "embedding"}
    if unknown:
        raise ValueError(f"optim.no_decay: unknown kinds {sorted(unknown)}; use bias, norm, embedding")
    decay, keep, seen = [], [], set()
    for _, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_norm = isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
            is_emb = isinstance(module, nn.Embedding) or "embedding" in type(module).__name__.lower()
            skip = (("bias" in no_decay and p_name == "bias")
                    or ("norm" in no_decay and is_norm)
                    or ("embedding" in no_decay and is_emb))
            (keep if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    if cfg.name == "adafactor":
        # each step moves a weight by lr x its RMS: T5's init gives the query projection
        # a std of 1/sqrt(D Dh) and the embeddings 1; AdamW's absolute steps would move the
        # first far too fast (attention collapses) and the second hardly at all
        return torch.optim.Adafactor(groups, lr=cfg.lr, foreach=True)
    # the fused kernel updates all parameters in one pass (CPU and CUDA); same math as foreach
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def lr_at(step: int, base_lr: float, sched: ScheduleConfig, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then the decay."""
    if sched.warmup_steps and step < sched.warmup_steps:
        return base_lr * (step + 1) / sched.warmup_steps
    if sched.name == "constant":
        return base_lr
    total = sched.decay_steps or max_steps
    span = max(total - sched.warmup_steps, 1)
    progress = min(max(step - sched.warmup_steps, 0) / span, 1.0)
    if sched.name == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        coeff = 1.0 - progress
    return sched.min_lr + coeff * (base_lr - sched.min_lr)
