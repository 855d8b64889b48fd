"""Low-rank factorisation: replace chosen linears of every block by their truncated SVD.

W = U S V^T (D_out, D_in) is kept to rank r as up = U_r S_r^1/2 (D_out, r) and
down = S_r^1/2 V_r^T (r, D_in), the two halves of the model's own `LowRankLinear`; the
bias stays on `up`. Splitting S evenly between the two factors keeps their scales alike,
which suits fine-tuning after (recovery). At full rank the product is W up to float
error. The rank of each factorised linear goes into `model.config.layers[i].ranks`, so
the saved model rebuilds with the same factors. The module keeps its name (attn.q_proj
is still attn.q_proj; its weights become attn.q_proj.down / .up).

The rank is either given (`rank`, capped at min(D_in, D_out)) or the smallest that keeps
a fraction `energy` of the squared singular values (the spectral energy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from zerolm.compress.surgery import (
    block_linears,
    blocks,
    check_linear,
    check_reshapable,
    effective_weight,
    output_bias,
    set_layer_shape,
)
from zerolm.errors import ConfigError
from zerolm.models.config import FACTORISABLE
from zerolm.models.layers import LowRankLinear

log = logging.getLogger(__name__)


def choose_rank(singular: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """The rank kept for a matrix with these singular values (descending)."""
    full = len(singular)
    if rank is not None:
        return max(1, min(rank, full))
    share = singular.double().pow(2).cumsum(0) / singular.double().pow(2).sum().clamp(min=1e-300)
    # the smallest r whose first r values hold `energy` of the total (tolerant to rounding)
    return max(1, min(full, int((share < energy - 1e-12).sum()) + 1))


def factorise(linear: nn.Linear | LowRankLinear, rank: int | None = None, energy: float | None = None
              ) -> LowRankLinear:
    """A LowRankLinear of the chosen rank that approximates `linear` (same device and dtype)."""
    w = effective_weight(linear).detach()  # (D_out, D_in)
    bias = output_bias(linear)
    U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)  # (D_out, k), (k,), (k, D_in)
    r = choose_rank(S, rank, energy)
    root = S[:r].sqrt()
    new = LowRankLinear(w.shape[1], w.shape[0], r, bias=bias is not None).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.down.weight.copy_(root[:, None] * Vh[:r])  # (r, D_in)
        new.up.weight.copy_(U[:, :r] * root[None, :])  # (D_out, r)
        if bias is not None:
            new.up.bias.copy_(bias)
    trains = next(linear.parameters()).requires_grad  # a frozen linear stays frozen
    for p in new.parameters():
        p.requires_grad_(trains)
    return new


def low_rank(model: nn.Module, rank: int | None = None, energy: float | None = None,
             targets: Sequence[str] = FACTORISABLE) -> dict:
    """Factorise the `targets` linears of every block of `model` in place, by `rank` or by
    the kept `energy` (a fraction in (0, 1]). Returns {"ranks": [{name: r} per block],
    "params_before", "params_after"} counting the targets' weights only."""
    check_reshapable(model, "low-rank")
    if (rank is None) == (energy is None):
        raise ConfigError("low-rank: give exactly one of a rank (e.g. 16) and an energy to keep (e.g. 0.9)")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"low-rank: rank must be a positive integer, got {rank!r}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ConfigError(f"low-rank: energy is the share of spectral energy kept, in (0, 1]; got {energy}")
    found = [(i, name, mod) for i, _, name, mod in block_linears(model, targets)]
    for i, name, mod in found:  # every check before the first change
        check_linear(mod, f"block {i} {name}")
    before = after = 0
    larger: list[str] = []
    for i, name, mod in found:
        w = effective_weight(mod)
        if not w.numel():  # a linear of a fully pruned block has nothing to factorise
            continue
        new = factorise(mod, rank, energy)
        parent_name, _, leaf = name.rpartition(".")
        block = blocks(model)[i]
        setattr(block.get_submodule(parent_name), leaf, new)  # same name, new module
        ranks = dict(model.config.layer(i).ranks)
        ranks[name] = new.rank
        set_layer_shape(model.config, i, ranks=ranks)
        kept = new.down.weight.numel() + new.up.weight.numel()  # r (D_in + D_out)
        if kept > w.numel():
            larger.append(f"block {i} {name} (rank {new.rank}: {kept} > {w.numel()})")
        before, after = before + w.numel(), after + kept
    if larger:
        # allowed (a full-rank factorisation is exact, useful to check), but rarely meant
        log.warning("%d factorised linears hold more weights than the dense ones they replace: %s%s; "
                    "choose a lower rank or energy", len(larger), ", ".join(larger[:3]),
                    ", ..." if len(larger) > 3 else "")
    result = [dict(model.config.layer(i).ranks) for i in range(model.config.n_layers)]
    log.info("factorised %d linears: %d -> %d weights", len(found), before, after)
    return {"method": "low-rank", "ranks": result, "params_before": before, "params_after": after}
