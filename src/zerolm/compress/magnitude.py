"""Unstructured magnitude pruning: set the smallest-magnitude weights of the block linears
to zero (Han et al., "Learning both Weights and Connections", 2015).

The zeros are stored dense: the file keeps its size (before compression by an archiver)
and dense kernels run exactly as fast, since they multiply the zeros too. What it buys is
a sparse model for sparse kernels or formats, and a measure of how many weights a task
needs. Biases, LayerNorms, embeddings and the task head are left alone.

`scope` "global" ranks every chosen weight of the model together (blocks that matter
less lose more); "layer" prunes each linear to the same sparsity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from zerolm.compress.surgery import all_blocks, block_linears, check_linear
from zerolm.errors import ConfigError
from zerolm.models.config import FACTORISABLE
from zerolm.models.layers import LowRankLinear

log = logging.getLogger(__name__)

NO_SPEEDUP = ("magnitude pruning stores its zeros dense: the model is no smaller on disk and no faster "
              "with dense kernels")


def _weights(model: nn.Module, targets: Sequence[str]) -> list[tuple[int, str, nn.Parameter]]:
    """(index in all_blocks, "blocks.i.name" path, weight) of the targets' non-empty weights."""
    out = []
    for i, path, name, mod in block_linears(model, targets):
        check_linear(mod, f"{path}.{name}")
        if isinstance(mod, LowRankLinear):
            out += [(i, f"{path}.{name}.down", mod.down.weight), (i, f"{path}.{name}.up", mod.up.weight)]
        else:
            out.append((i, f"{path}.{name}", mod.weight))
    return [(i, n, w) for i, n, w in out if w.numel()]


def _zero_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the same shape, True at the k entries of smallest magnitude."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        mask[torch.argsort(flat.abs().reshape(-1), stable=True)[:k]] = True
    return mask


def magnitude(model: nn.Module, sparsity: float, scope: str = "global",
              targets: Sequence[str] = FACTORISABLE) -> dict:
    """Zero the `sparsity` share of smallest-magnitude weights of the `targets` linears of
    every block, in place. Returns {"sparsity": {"blocks.i.name": share zero}, "per_block":
    [share zero per block], "overall": share zero, "note": that dense kernels gain nothing}."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"magnitude: sparsity is the share of weights set to zero, in [0, 1); got {sparsity}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"magnitude: scope must be 'global' or 'layer', got {scope!r}")
    found = _weights(model, targets)
    with torch.no_grad():
        if scope == "global":
            sizes = [w.numel() for _, _, w in found]
            flat = torch.cat([w.detach().float().reshape(-1) for _, _, w in found])
            masks = _zero_smallest(flat, math.floor(sparsity * flat.numel() + 0.5)).split(sizes)
        else:
            masks = [_zero_smallest(w.detach().float(), math.floor(sparsity * w.numel() + 0.5)) for _, _, w in found]
        for (_, _, w), m in zip(found, masks):
            w.masked_fill_(m.view(w.shape), 0.0)
    report = sparsity_report(model, targets)
    log.info("magnitude pruning (%s): %.1f%% of the block linears' weights are zero; %s", scope,
             100 * report["overall"], NO_SPEEDUP)
    return {"method": "magnitude", "scope": scope, **report, "note": NO_SPEEDUP}


def sparsity_report(model: nn.Module, targets: Sequence[str] = FACTORISABLE) -> dict:
    """The share of zero weights of the `targets` linears: {"sparsity": {"blocks.i.name":
    share}, "per_block": [share per block of all_blocks], "overall": share of all of them}."""
    per_linear, per_block, total, zeros = {}, {}, 0, 0
    for i, name, w in _weights(model, targets):
        z = int((w == 0).sum())
        per_linear[name] = z / w.numel()
        b = per_block.setdefault(i, [0, 0])
        b[0] += z
        b[1] += w.numel()
        zeros, total = zeros + z, total + w.numel()
    blocks_share = [per_block[i][0] / per_block[i][1] if i in per_block else 0.0
                    for i in range(len(all_blocks(model)))]
    return {"sparsity": per_linear, "per_block": blocks_share, "overall": zeros / max(total, 1)}


def zero_mask(model: nn.Module, targets: Sequence[str] = FACTORISABLE) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask, True where the weight is zero} of the `targets` linears:
    what `apply_mask` sets back to zero after training moved the pruned weights (recovery)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(w)]: (w.detach() == 0).clone() for _, _, w in _weights(model, targets)}


def apply_mask(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    """Set the weights `mask` marks to zero again, in place (`model` may be another instance
    of the same architecture: the mask is keyed by parameter name)."""
    params = dict(model.named_parameters())
    missing = sorted(set(mask) - set(params))
    if missing:
        raise ValueError(f"the mask names weights this model does not have: {missing[:3]}")
    with torch.no_grad():
        for name, m in mask.items():
            params[name].masked_fill_(m.to(params[name].device), 0.0)
