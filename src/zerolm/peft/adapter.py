"""Houlsby bottleneck adapters inserted after attention and feed-forward outputs.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (2019). Each adapter
is h + up(gelu(down(h))): a D -> M -> D bottleneck with a residual connection. The
up-projection starts at zero, so a freshly adapted model computes exactly what the base
model did. Adapters sit on the output projection of attention (`attn.o_proj`) and of
the feed-forward network (`mlp.fc_out`), before the block's dropout and residual sum.
`LinearWithAdapter` owns the base `weight` and `bias`, so base state-dict keys stay the
same and only `<name>.adapter.*` keys are added.

Shape letters: N any leading dims, D d_model, M adapter (bottleneck) size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.config import AdapterConfig
from zerolm.peft.base import Strategy
from zerolm.peft.match import find_modules, replace_module

log = logging.getLogger(__name__)

ADAPTER_TARGETS = ("attn.o_proj", "mlp.fc_out")


class BottleneckAdapter(nn.Module):
    """h + up(gelu(down(h))), identity at initialisation (up = 0)."""

    def __init__(self, dim: int, size: int, device=None, dtype=None):
        super().__init__()
        if size <= 0:
            raise ValueError(f"adapter size must be positive, got {size}")
        self.down = nn.Linear(dim, size, device=device, dtype=dtype)  # D -> M, default init
        self.act = nn.GELU()
        self.up = nn.Linear(size, dim, device=device, dtype=dtype)  # M -> D
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, D)
        return h + self.up(self.act(self.down(h)))


class LinearWithAdapter(nn.Module):
    """A linear layer (the base's own weight and bias) followed by a bottleneck adapter."""

    def __init__(self, base: nn.Linear, size: int):
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight  # (D_out, D_in): same Parameter, same state-dict key
        self.bias = base.bias
        self.adapter = BottleneckAdapter(base.out_features, size, base.weight.device, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))


def apply_adapters(model: nn.Module, size: int = 64,
                   targets: Iterable[str] = ADAPTER_TARGETS) -> list[str]:
    """Insert an adapter after every nn.Linear matching `targets` (in place); returns names."""
    targets = tuple(targets)
    names = find_modules(model, targets, nn.Linear)
    if not names:
        raise ValueError(f"no nn.Linear module matches adapter targets {list(targets)}; "
                         "the model must use the stable names attn.o_proj and mlp.fc_out")
    for name in names:
        replace_module(model, name, LinearWithAdapter(model.get_submodule(name), size))
    log.info("Houlsby adapters (size %d) after %d modules", size, len(names))
    return names


class AdapterStrategy(Strategy):
    """Houlsby adapters, every LayerNorm and the head train."""

    name = "adapter"
    settings_class = AdapterConfig

    def apply(self, model: nn.Module) -> None:
        apply_adapters(model, self.settings.size)

    def trains(self, model: nn.Module):
        ids = {id(p) for m in model.modules() if isinstance(m, BottleneckAdapter) for p in m.parameters()}
        ids |= {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        return lambda pid, names: pid in ids
