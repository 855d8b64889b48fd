"""Structured pruning: remove whole attention heads or feed-forward neurons physically.

A head h of a block owns rows h*Dh .. (h+1)*Dh - 1 of q_proj, k_proj and v_proj and the
same columns of o_proj; a neuron n owns row n of fc_in and column n of fc_out. Removing
them shrinks those linears, and the block's new head count / width goes into
`model.config.layers`, so the saved model rebuilds with the same shapes. Nothing else
changes: the residual width D, the other blocks and the task head stay as they were.

Which units go: the least important by `zerolm.compress.importance`, either a fraction
of all units ranked together (scope "global", Michel et al. 2019), the same fraction of
every block (scope "layer"), or a count per block. A choice that empties a block is
refused unless `allow_empty` (the model core runs such a block: attention with no heads
adds only o_proj's bias, a feed-forward of width 0 only fc_out's), before anything changes.

Shape letters: H heads, Dh head size, F feed-forward width, L blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from zerolm.compress.importance import HasLoss, Unit, scores
from zerolm.compress.surgery import (
    blocks,
    check_linear,
    check_reshapable,
    keep_inputs,
    keep_outputs,
    set_layer_shape,
)
from zerolm.errors import ConfigError

log = logging.getLogger(__name__)

Scope = Literal["global", "layer"]
PerLayer = Sequence[int] | Mapping[int, int]


def remove_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> list[int]:
    """Remove the given heads {block: [head, ...]} in place; the head count of every block after."""
    check_reshapable(model, "prune-heads")
    heads = {i: sorted(set(hs)) for i, hs in heads.items()}
    for i, block in enumerate(blocks(model)):  # every check before the first change
        gone = heads.get(i, [])
        if gone and (gone[0] < 0 or gone[-1] >= block.attn.n_heads):
            raise ConfigError(f"block {i} has heads 0..{block.attn.n_heads - 1}; cannot remove head(s) {gone}")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            check_linear(getattr(block.attn, name), f"block {i} attn.{name}")
    for i, block in enumerate(blocks(model)):
        attn, gone = block.attn, heads.get(i, [])
        if not gone:
            continue
        keep = [h for h in range(attn.n_heads) if h not in gone]
        Dh = attn.head_dim
        rows = [h * Dh + j for h in keep for j in range(Dh)]  # (H' * Dh,) rows of q, k, v
        for name in ("q_proj", "k_proj", "v_proj"):
            keep_outputs(getattr(attn, name), rows)
        keep_inputs(attn.o_proj, rows)
        attn.n_heads = len(keep)  # split_heads reshapes by it
        set_layer_shape(model.config, i, n_heads=len(keep))
    return [b.attn.n_heads for b in blocks(model)]


def remove_neurons(model: nn.Module, neurons: Mapping[int, Iterable[int]]) -> list[int]:
    """Remove the given feed-forward neurons {block: [neuron, ...]} in place; every block's width after."""
    check_reshapable(model, "prune-ffn")
    neurons = {i: sorted(set(ns)) for i, ns in neurons.items()}
    for i, block in enumerate(blocks(model)):  # every check before the first change
        check_linear(block.mlp.fc_in, f"block {i} mlp.fc_in")
        check_linear(block.mlp.fc_out, f"block {i} mlp.fc_out")
        width, gone = block.mlp.fc_in.out_features, neurons.get(i, [])
        if gone and (gone[0] < 0 or gone[-1] >= width):
            raise ConfigError(f"block {i} has neurons 0..{width - 1}; cannot remove neuron(s) {gone[-5:]}")
    for i, block in enumerate(blocks(model)):
        mlp, gone = block.mlp, set(neurons.get(i, []))
        if not gone:
            continue
        keep = [n for n in range(mlp.fc_in.out_features) if n not in gone]
        keep_outputs(mlp.fc_in, keep)
        keep_inputs(mlp.fc_out, keep)
        set_layer_shape(model.config, i, d_ff=len(keep))
    return [b.mlp.fc_in.out_features for b in blocks(model)]


def choose(unit_scores: list[torch.Tensor], *, fraction: float | None = None, per_layer: PerLayer | None = None,
           scope: Scope = "global", allow_empty: bool = False, what: str = "heads") -> dict[int, list[int]]:
    """The units to remove {block: [index, ...]}: the lowest-scoring ones, by a fraction
    (of all units, or of each block's) or by a count per block. Refuses a choice that
    leaves a block with none of its units unless `allow_empty`."""
    sizes = [len(s) for s in unit_scores]
    L = len(sizes)
    if (fraction is None) == (per_layer is None):
        raise ConfigError(f"pruning {what}: give exactly one of a fraction (e.g. 0.4) and per-layer counts")
    if per_layer is not None:
        counts = _per_layer_counts(per_layer, sizes, what)
        chosen = {i: torch.argsort(unit_scores[i], stable=True)[:k].tolist() for i, k in enumerate(counts) if k}
    else:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"pruning {what}: fraction must be between 0 and 1 (the share removed), "
                              f"got {fraction}")
        if scope == "layer":
            chosen = {i: torch.argsort(s, stable=True)[:math.floor(fraction * len(s) + 0.5)].tolist()
                      for i, s in enumerate(unit_scores)}
        elif scope == "global":
            flat = torch.cat([s.float() for s in unit_scores]) if L else torch.zeros(0)
            owner = [(i, j) for i, n in enumerate(sizes) for j in range(n)]
            k = math.floor(fraction * len(flat) + 0.5)
            chosen = {}
            for f in torch.argsort(flat, stable=True)[:k].tolist():
                i, j = owner[f]
                chosen.setdefault(i, []).append(j)
        else:
            raise ConfigError(f"pruning {what}: scope must be 'global' or 'layer', got {scope!r}")
    chosen = {i: sorted(js) for i, js in sorted(chosen.items()) if js}
    emptied = [i for i, js in chosen.items() if sizes[i] and len(js) == sizes[i]]
    if emptied and not allow_empty:
        raise ConfigError(
            f"pruning {what}: this would remove every one of the {what} of block(s) {emptied} "
            f"(sizes {[sizes[i] for i in emptied]}); lower the fraction, give per-layer counts, use "
            f"scope 'layer', or allow empty blocks (allow_empty=True / --allow-empty)")
    return chosen


def _per_layer_counts(per_layer: PerLayer, sizes: list[int], what: str) -> list[int]:
    L = len(sizes)
    if isinstance(per_layer, Mapping):
        bad = [i for i in per_layer if not 0 <= int(i) < L]
        if bad:
            raise ConfigError(f"pruning {what}: per-layer counts name block(s) {bad}; the model has blocks "
                              f"0..{L - 1}")
        counts = [int(per_layer.get(i, 0)) for i in range(L)]
    else:
        counts = [int(c) for c in per_layer]
        if len(counts) != L:
            raise ConfigError(f"pruning {what}: {len(counts)} per-layer counts for a model of {L} blocks; "
                              "give one count (of units to remove) per block")
    for i, (c, n) in enumerate(zip(counts, sizes)):
        if not 0 <= c <= n:
            raise ConfigError(f"pruning {what}: block {i} has {n} {what}; cannot remove {c}")
    return counts


def prune_heads(model: nn.Module, fraction: float | None = None, per_layer: PerLayer | None = None, *,
                importance: str = "weight_norm", scope: Scope = "global", objective: HasLoss | None = None,
                batches: Iterable[dict[str, torch.Tensor]] | None = None, allow_empty: bool = False) -> dict:
    """Remove the least important attention heads of `model` in place.

    `fraction`: the share of heads removed; `per_layer`: heads removed from each block
    (a list, one per block, or {block: count}). `importance`: "weight_norm" (no data) or
    "gradient" (needs `objective` with `.loss(model, batch)`, e.g. a fine-tuned model's
    task, and labelled `batches`). Returns {"removed": {block: [head, ...]}, "heads": [H per block]}.
    """
    return _prune(model, "heads", fraction, per_layer, importance, scope, objective, batches, allow_empty)


def prune_ffn(model: nn.Module, fraction: float | None = None, per_layer: PerLayer | None = None, *,
              importance: str = "weight_norm", scope: Scope = "global", objective: HasLoss | None = None,
              batches: Iterable[dict[str, torch.Tensor]] | None = None, allow_empty: bool = False) -> dict:
    """Remove the least important feed-forward neurons of `model` in place (the same rules
    as `prune_heads`; per_layer counts neurons). Returns {"removed": ..., "d_ff": [F per block]}."""
    return _prune(model, "neurons", fraction, per_layer, importance, scope, objective, batches, allow_empty)


# unit -> (method name, the record's key for the widths left, the unit and the widths as the log says them)
_UNITS = {"heads": ("prune-heads", "heads", "attention heads", "heads per block"),
          "neurons": ("prune-ffn", "d_ff", "feed-forward neurons", "width per block")}


def _prune(model, unit: Unit, fraction, per_layer, importance, scope, objective, batches, allow_empty) -> dict:
    """Score the units, choose the least important, remove them, say so."""
    method, key, what, widths = _UNITS[unit]
    check_reshapable(model, method)  # before scoring (a gradient pass) takes time
    s = scores(model, unit, importance, objective, batches)
    chosen = choose(s, fraction=fraction, per_layer=per_layer, scope=scope, allow_empty=allow_empty, what=unit)
    before = sum(len(x) for x in s)
    after = (remove_heads if unit == "heads" else remove_neurons)(model, chosen)
    log.info("pruned %d of %d %s (%s importance); %s now %s", before - sum(after), before, what, importance,
             widths, after)
    return {"method": method, "importance": importance, "removed": chosen, key: after}


def unit_counts(model: nn.Module, unit: Unit) -> list[int]:
    return [b.attn.n_heads if unit == "heads" else b.mlp.fc_in.out_features for b in blocks(model)]
