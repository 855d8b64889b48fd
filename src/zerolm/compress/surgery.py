"""Weight surgery shared by the compression transforms: keep some rows or columns of a
linear, read a linear's effective weight, record a block's new shape in the config.

Every change happens in place on the modules the model already has: module names, the
modules' identity (and so any hook a caller holds) and the rest of the model stay as they
were. The config object is shared by a task head and its body, so shapes are recorded by
mutating it, never by assigning a new one.

Shape letters: D_in / D_out a linear's input / output width, r a factorisation's rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from zerolm.errors import ConfigError
from zerolm.models import body_of, family
from zerolm.models.config import FACTORISABLE, LayerShape, ModelConfig
from zerolm.models.layers import LowRankLinear


def check_reshapable(model: nn.Module, method: str) -> None:
    """Refuse a shape-changing `method` (head / FFN pruning, low-rank) on a family whose
    per-block shapes the config cannot record (FamilySpec.layer_shapes)."""
    if not family(model.config).layer_shapes:
        raise ConfigError(f"{method} changes per-block shapes, which a {model.config.family} model's config "
                          "cannot record (model.layers describes encoder blocks only); int8-dynamic, "
                          "int8-weight and magnitude apply")


def check_linear(module: nn.Module, where: str) -> nn.Linear | LowRankLinear:
    """`module` if it is a plain or factorised linear; otherwise an error saying why not
    (a LoRA or adapter wrapper keeps extra weights a transform would silently drop)."""
    if isinstance(module, (nn.Linear, LowRankLinear)):
        return module
    raise ConfigError(f"{where} is a {type(module).__name__}, not a plain linear: compression works on a "
                      "fully fine-tuned model (merge or drop LoRA / adapters first, e.g. fine-tune with "
                      "strategy.name=full)")


def effective_weight(linear: nn.Linear | LowRankLinear) -> torch.Tensor:
    """The (D_out, D_in) matrix the linear applies (up @ down for a factorised one)."""
    if isinstance(linear, LowRankLinear):
        return linear.up.weight @ linear.down.weight  # (D_out, r) @ (r, D_in)
    return linear.weight


def output_bias(linear: nn.Linear | LowRankLinear) -> torch.Tensor | None:
    return linear.up.bias if isinstance(linear, LowRankLinear) else linear.bias


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))


def keep_outputs(linear: nn.Linear | LowRankLinear, index: Sequence[int]) -> None:
    """Keep only the output rows `index` (in that order) of the linear."""
    target = linear.up if isinstance(linear, LowRankLinear) else linear
    index = torch.as_tensor(index, dtype=torch.long, device=target.weight.device)
    _replace(target, "weight", target.weight[index])  # (len(index), D_in or r)
    if target.bias is not None:
        _replace(target, "bias", target.bias[index])
    target.out_features = len(index)
    linear.out_features = len(index)


def keep_inputs(linear: nn.Linear | LowRankLinear, index: Sequence[int]) -> None:
    """Keep only the input columns `index` (in that order) of the linear."""
    target = linear.down if isinstance(linear, LowRankLinear) else linear
    index = torch.as_tensor(index, dtype=torch.long, device=target.weight.device)
    _replace(target, "weight", target.weight[:, index])  # (D_out or r, len(index))
    target.in_features = len(index)
    linear.in_features = len(index)


def set_layer_shape(cfg: ModelConfig, i: int, **changes) -> None:
    """Record block i's new shape (n_heads, d_ff, ranks) in `cfg`, in place."""
    if not cfg.layers:
        cfg.layers = [LayerShape() for _ in range(cfg.n_layers)]
    shape = cfg.layers[i]
    for name, value in changes.items():
        setattr(shape, name, value)
    shape.__post_init__()  # the same validation a config file gets


def blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The blocks whose shapes model.layers records: an encoder's or a decoder-only model's."""
    return body_of(model).blocks


def all_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path such as "blocks.3" or "decoder.blocks.1", block) of every block of the body:
    `blocks`, then an encoder-decoder's decoder blocks (what shape-keeping transforms such
    as int8 and magnitude pruning work on)."""
    body = body_of(model)
    out = [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
    decoder = getattr(body, "decoder", None)
    if decoder is not None:
        out += [(f"decoder.blocks.{i}", b) for i, b in enumerate(decoder.blocks)]
    return out


def block_linears(model: nn.Module, targets: Sequence[str] = FACTORISABLE
                  ) -> Iterator[tuple[int, str, str, nn.Module]]:
    """(index in `all_blocks`, the block's path, name such as "attn.q_proj", module) of the
    chosen linears of every block that has them (an encoder block has no cross_attn, a
    plain feed-forward no fc_gate). `blocks` come first, so their indices match model.layers."""
    unknown = [t for t in targets if t not in FACTORISABLE]
    if unknown:
        raise ConfigError(f"unknown linear(s) {unknown}; the linears of a block are {', '.join(FACTORISABLE)}")
    for i, (path, block) in enumerate(all_blocks(model)):
        for name in targets:
            parent, _, leaf = name.rpartition(".")
            owner = getattr(block, parent, None)
            if owner is None or getattr(owner, leaf, None) is None:
                continue
            yield i, path, name, block.get_submodule(name)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())
