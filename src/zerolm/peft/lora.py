"""LoRA: low-rank updates to frozen linear layers, applied to a finished model.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021). A frozen
weight W (out, in) gets a trainable update scale * B @ A with A (r, in), B (out, r),
scale = alpha / r. B starts at zero, so a freshly wrapped model computes exactly what
the base model did. `LoRALinear` owns the base `weight` and `bias` (the same Parameter
objects), so the base state-dict keys are unchanged and only `lora_a` / `lora_b` are
added next to them (as torchtune does).

Shape letters: N any leading dims, I in_features, O out_features, R rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.config import LoraConfig
from zerolm.peft.base import Strategy
from zerolm.peft.match import find_modules, replace_module, shared_names

log = logging.getLogger(__name__)

LORA_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Module):
    """y = x W^T + b + scale * dropout(x) A^T B^T, with W and b taken from `base`."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"lora rank must be positive, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {dropout}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        # the base's own Parameter objects: the keys stay `<name>.weight` / `<name>.bias`
        self.weight = base.weight  # (O, I)
        self.bias = base.bias  # (O,) or None
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (R, I)
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (O, R)
        # the init of nn.Linear (and of the LoRA reference code) for A; B = 0 makes the
        # initial update exactly zero
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update scale * B @ A, shaped like `weight` (O, I)."""
        return (self.lora_b @ self.lora_a) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into `weight`; forward then skips the LoRA path. Idempotent."""
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` (exact up to float rounding)."""
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, I) -> (N, O)
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha}, "
                f"merged={self.merged}")


def apply_lora(model: nn.Module, targets: Iterable[str] = ("q_proj", "v_proj"), *, rank: int = 8,
               alpha: float = 16.0, dropout: float = 0.0) -> list[str]:
    """Wrap every nn.Linear whose name matches `targets` in a LoRALinear, in place.

    Returns the wrapped module names. Does not touch `requires_grad`; see
    `zerolm.peft.apply_strategy` for that.
    """
    targets = tuple(targets)
    names = find_modules(model, targets, nn.Linear)
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"no nn.Linear module matches lora targets {list(targets)}; "
                         f"linear modules of this model include {linears[:8]}")
    tied = shared_names(model)
    for name in names:
        base = model.get_submodule(name)
        others = [n for n in tied[id(base.weight)] if n != f"{name}.weight"]
        if others:
            # merging would silently change the tied matrix (e.g. the token embedding) too
            raise ValueError(f"cannot apply LoRA to {name!r}: its weight is shared with {others}; "
                             "untie the weights (model.tie_embeddings: false) or pick other targets")
        replace_module(model, name, LoRALinear(base, rank, alpha, dropout))
    log.info("LoRA (rank %d, alpha %g) on %d modules: %s", rank, alpha, len(names), names)
    return names


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding W + scale * B @ A (in place).

    The result has exactly the base model's modules and state-dict keys, ready to export.
    """
    for name, m in lora_modules(model):
        w = m.weight.detach() if m.merged else m.weight.detach() + m.delta_weight().detach()
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        lin.weight.requires_grad_(m.weight.requires_grad)
        if m.bias is not None:
            lin.bias.requires_grad_(m.bias.requires_grad)
        replace_module(model, name, lin)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors (`...lora_a`, `...lora_b`): the adapter alone, to save apart."""
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[2] in LORA_KEYS}


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load tensors saved by `lora_state_dict` into a model wrapped with the same targets."""
    own = dict(lora_state_dict(model))
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(f"LoRA state dict does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; apply LoRA with the same targets first")
    merged = [n for n, m in lora_modules(model) if m.merged]
    if merged:
        raise ValueError(f"cannot load LoRA weights into merged modules {merged[:5]}: "
                         "unmerge them first")
    with torch.no_grad():
        for k, t in own.items():
            if t.shape != state_dict[k].shape:
                raise ValueError(f"LoRA tensor {k!r} has shape {tuple(state_dict[k].shape)}, "
                                 f"the model expects {tuple(t.shape)} (different rank?)")
            t.copy_(state_dict[k])


class LoraStrategy(Strategy):
    """LoRA A, B beside the frozen `settings.targets` linears (and the head) train."""

    name = "lora"
    settings_class = LoraConfig

    def apply(self, model: nn.Module) -> None:
        s = self.settings
        apply_lora(model, s.targets, rank=s.rank, alpha=s.alpha, dropout=s.dropout)

    def trains(self, model: nn.Module):
        ids = {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)}
        return lambda pid, names: pid in ids
