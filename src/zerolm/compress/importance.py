"""How much each attention head and each feed-forward neuron matters, per block.

Two measures:
- "weight_norm" (data-free): the norm of the weights a unit writes through. A head's
  output reaches the residual stream only through its value rows and its output-projection
  columns (queries and keys only decide where it looks), so a head scores
  ||W_v[h]|| * ||W_o[:, h]||; a neuron scores ||W_in[n]|| * ||W_out[:, n]||. A unit whose
  output weights are zero scores 0 and goes first.
- "gradient" (Michel et al., "Are Sixteen Heads Really Better than One?", 2019): put a
  gate xi = 1 on each unit's output and accumulate |d loss / d xi| over a sample of the
  task's labelled data, a first-order estimate of the loss change when the unit is
  removed. The gates are multiplied in by forward pre-hooks on o_proj / fc_out from
  outside the model, and removed afterwards.

Scores are normalised to unit L2 norm within each block (as Michel et al. do), so a
global ranking compares blocks whose weights or gradients differ in scale.

Shape letters: B batch, T tokens, H heads, Dh head size, F feed-forward width.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

import torch
from torch import nn

from zerolm.compress.surgery import blocks, effective_weight
from zerolm.errors import ConfigError

Importance = Literal["weight_norm", "gradient"]
IMPORTANCE = ("weight_norm", "gradient")
Unit = Literal["heads", "neurons"]


class HasLoss(Protocol):
    """What gradient importance needs of a task (every zerolm task answers it)."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]: ...


def _normalise(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    return [s / s.norm().clamp(min=1e-12) if s.numel() else s for s in scores]


def weight_norm_scores(model: nn.Module, unit: Unit) -> list[torch.Tensor]:
    """Per block, one data-free score per head (H,) or per neuron (F,)."""
    out = []
    with torch.no_grad():
        for block in blocks(model):
            if unit == "heads":
                attn = block.attn
                H, Dh, D = attn.n_heads, attn.head_dim, model.config.d_model
                v = effective_weight(attn.v_proj).float().reshape(H, Dh, D)  # (H, Dh, D)
                o = effective_weight(attn.o_proj).float().reshape(D, H, Dh)  # (D, H, Dh)
                out.append(v.pow(2).sum((1, 2)).sqrt() * o.pow(2).sum((0, 2)).sqrt())  # (H,)
            else:
                w_in = effective_weight(block.mlp.fc_in).float()  # (F, D)
                w_out = effective_weight(block.mlp.fc_out).float()  # (D, F)
                out.append(w_in.norm(dim=1) * w_out.norm(dim=0))  # (F,)
    return _normalise(out)


def gradient_scores(model: nn.Module, unit: Unit, objective: HasLoss,
                    batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Per block, sum over `batches` of |d loss / d gate| for each head (H,) or neuron (F,)."""
    device = next(model.parameters()).device
    gates: list[torch.Tensor] = []
    handles = []
    for block in blocks(model):
        if unit == "heads":
            n, target = block.attn.n_heads, block.attn.o_proj
        else:
            n, target = block.mlp.fc_in.out_features, block.mlp.fc_out
        gate = torch.ones(n, device=device, requires_grad=True)
        gates.append(gate)
        handles.append(target.register_forward_pre_hook(_gate_hook(gate)))
    totals = [torch.zeros(g.shape, device=device) for g in gates]
    live = [g for g in gates if g.numel()]
    was_training = model.training
    model.eval()  # dropout off: the scores measure the model as it will be used
    seen = 0
    try:
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss, _ = objective.loss(model, batch)
            # only the gates' gradients: the model's parameters get no .grad
            grads = iter(torch.autograd.grad(loss, live, allow_unused=True)) if live else iter(())
            for t, g in zip(totals, gates):
                if g.numel():
                    d = next(grads)
                    if d is not None:
                        t += d.abs()
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ConfigError("gradient importance got no batches: give a labelled data file with at least one "
                          "example (or use importance=weight_norm, which needs no data)")
    return _normalise([t.detach().cpu() for t in totals])


def _gate_hook(gate: torch.Tensor):
    """A pre-hook on o_proj / fc_out that scales each unit's output by its gate."""
    n = gate.numel()

    def hook(module, args):
        x = args[0]  # (B, T, H * Dh) or (B, T, F)
        if not n:
            return None
        shape = x.shape
        x = x.reshape(*shape[:-1], n, -1) * gate[:, None].to(x.dtype)  # (B, T, H, Dh) or (B, T, F, 1)
        return (x.reshape(shape), *args[1:])

    return hook


def scores(model: nn.Module, unit: Unit, importance: str, objective: HasLoss | None = None,
           batches: Iterable[dict[str, torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """Per-block importance of every head or neuron by the named measure."""
    if importance == "weight_norm":
        return weight_norm_scores(model, unit)
    if importance == "gradient":
        if objective is None or batches is None:
            raise ConfigError("importance=gradient needs the task's labelled data (a fine-tuned model and "
                              "--data FILE); importance=weight_norm needs none")
        return gradient_scores(model, unit, objective, batches)
    raise ConfigError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCE)}")
