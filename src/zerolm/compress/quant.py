"""Int8 quantization of a finished model: int8 weights with one fp32 scale per output
channel, in modules of zerolm's own (no `torch.ao.quantization`, deprecated, and no
quantized tensor dtypes such as torch.qint8, whose creation functions warn as deprecated
in torch 2.13). Two methods share one storage and differ in the forward pass:

- `int8_weight` (a size method): each call dequantizes the weight (W_q * s) and runs the
  fp32 matmul. Activations stay fp32, so outputs differ from the fp32 model only by the
  rounding of the weights; the dequantization costs time on every call: it is no faster
  than fp32 on CPU, and slower (MiniLM, CPU time: +2% with 1 thread, up to ~1.9x with 2,
  where the fp32 matmul parallelises better than the dequantization does).
- `int8_dynamic` (a speed method, CPU): each call also quantizes the activations, one
  symmetric scale per token (a token with large activations does not crush the
  resolution of the others), multiplies int8 by int8 into exact int32 sums
  (`torch._int_mm`, oneDNN / VNNI on x86) and rescales: y = (x_q W_q^T) * s_x s_w + b.

Symmetric per-channel weights: s = max|W[o, :]| / 127, W_q = round(W / s) in [-127, 127]
(-128 unused, so that the range is symmetric and negation exact).

What is quantized: the chosen linears of every block (default all six; both factors of a
low-rank linear) and the token embedding (int8 rows, one scale per row, dequantized at
lookup) when it is not tied to an output layer and the body is an encoder (a decoder's
KV cache takes its dtype from the token embedding). The embedding is most of a small
encoder's bytes (MiniLM: 11.7M of 22.7M weights), so without it an int8 MiniLM would be
only ~1.5x smaller on disk. The task head (classifier, CRF, pooler), LayerNorms, position
and type embeddings stay fp32: they are small, and the head makes the final decision.

Storage (safetensors): `<name>.weight` int8 (D_out, D_in) under the key it had before,
`<name>.weight_scale` fp32 (D_out,), `<name>.bias` fp32. compress.json's "quantization"
entry (`quantization_record`) names the modules; on load `replay_quantization` puts the
int8 modules back in place of the fp32 ones the config builds, before the weights load.
An int8 module is frozen (inference only).

Shape letters: M rows (tokens of the batch), D_in / D_out a linear's widths, V vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.compress.surgery import block_linears, check_linear
from zerolm.errors import CheckpointError, ConfigError
from zerolm.models import body_of
from zerolm.models.config import FACTORISABLE
from zerolm.models.layers import LowRankLinear

log = logging.getLogger(__name__)

QUANT_METHODS = ("int8-weight", "int8-dynamic")
SLOWER = ("int8-weight is a size method: every call dequantizes the weights, so it runs slower than fp32 "
          "(use int8-dynamic for speed on CPU)")


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (R, C), fp32 scales (R,)): symmetric int8 with one scale per row of `w`."""
    w = w.detach().float()
    scale = w.abs().amax(1) / 127 if w.shape[1] else torch.zeros(w.shape[0], device=w.device)  # (R,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / safe[:, None]).clamp_(-127, 127).to(torch.int8)  # (R, C)
    return q, scale


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class Int8Linear(nn.Module):
    """A linear D_in -> D_out with int8 weights and fp32 per-output-channel scales.

    `dynamic=False`: dequantize and multiply in fp32 (weight-only); `dynamic=True`:
    quantize the activations per token and multiply in int8 on the CPU (dequantized
    fp32 elsewhere). The weight keeps the name and shape of nn.Linear's, so the
    state-dict keys stay `<name>.weight` / `<name>.bias`, plus `<name>.weight_scale`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dynamic: bool = False,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.dynamic = in_features, out_features, dynamic
        # a Parameter (frozen), not a buffer: it is still one of the model's weights, counted
        # as one, and tied or moved as parameters are
        self.weight = _frozen(torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))  # (D_out,)
        self.bias = _frozen(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, dynamic: bool) -> Int8Linear:
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, dynamic, w.device)
        q, scale = quantize_rows(w)
        new.weight.data.copy_(q)
        new.weight_scale.copy_(scale)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach())
        return new

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (D_out, D_in) weight this module applies, in `dtype`."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not (self.dynamic and x.device.type == "cpu" and x.numel() and self.weight.numel()):
            return F.linear(x, self.dequantized(x.dtype), bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()  # (M, D_in)
        s = x2.abs().amax(1, keepdim=True).clamp_(min=1e-12).div_(127)  # (M, 1) one scale per token
        xq = (x2 / s).round_().to(torch.int8)  # (M, D_in) in [-127, 127]
        y = torch._int_mm(xq, self.weight.t()).float()  # (M, D_out) exact int32 sums
        y.mul_(s).mul_(self.weight_scale)  # back to x's scale: s_x (M, 1) * s_w (D_out,)
        if bias is not None:
            y.add_(bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)  # (..., D_out)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else "weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, int8 {mode}"


class Int8Embedding(nn.Module):
    """A token embedding with int8 rows and one fp32 scale per row, dequantized at lookup
    (the rows looked up only: exact, and cheaper than the fp32 table's memory traffic)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = _frozen(torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, device=device))  # (V,)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.device)
        q, scale = quantize_rows(emb.weight)
        new.weight.data.copy_(q)
        new.weight_scale.copy_(scale)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(self.weight_scale.dtype)  # (..., D)
        return rows * self.weight_scale[ids].unsqueeze(-1)  # (..., D) * (..., 1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, int8"


INT8_MODULES = (Int8Linear, Int8Embedding)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, INT8_MODULES) for m in model.modules())


def int8_matmul_available() -> bool:
    """Whether this torch build multiplies int8 matrices on the CPU (torch._int_mm)."""
    try:
        a = torch.ones(2, 4, dtype=torch.int8)
        return bool(torch._int_mm(a, a.t().contiguous()).eq(4).all())
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _check(model: nn.Module, method: str) -> None:
    """Every refusal before the first change (and so before any file is written)."""
    if is_quantized(model):
        raise ConfigError(f"{method}: this model is already int8 (it holds int8 modules); quantize the fp32 "
                          "model it came from instead")
    if method == "int8-dynamic":
        devices = sorted({p.device.type for p in model.parameters()} - {"cpu"})
        if devices:
            raise ConfigError(f"int8-dynamic runs on the CPU; this model is on {', '.join(devices)}: load it "
                              "on the CPU (zerolm.load(path, device='cpu')), or use int8-weight, which "
                              "dequantizes on any device")
        if not int8_matmul_available():
            raise ConfigError(f"int8-dynamic: this torch build ({torch.__version__}) has no int8 matrix "
                              "multiply on the CPU (torch._int_mm); use int8-weight, or a CPU build of torch "
                              "for x86-64 or arm64")


def _token_embedding(model: nn.Module) -> tuple[nn.Embedding | None, str]:
    """(the token embedding to quantize, or None, and why not)."""
    body = body_of(model)
    emb = body.tok_emb
    if not isinstance(emb, nn.Embedding):
        return None, f"the token embedding is a {type(emb).__name__}, not an nn.Embedding"
    shared = [n for n, p in model.named_parameters(remove_duplicate=False)
              if p is emb.weight and not n.endswith("tok_emb.weight")]
    if shared:
        return None, f"it is tied to {shared[0]} (an output layer reads the same matrix)"
    if body.causal:
        return None, "a decoder's KV cache takes its dtype from the token embedding"
    return emb, ""


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def quantize(model: nn.Module, method: str = "int8-dynamic", targets: Sequence[str] = FACTORISABLE,
             embeddings: bool = True) -> dict:
    """Quantize the `targets` linears of every block of `model` in place (and the token
    embedding, with `embeddings`, where it can be: see the module docstring). `method`
    is "int8-weight" or "int8-dynamic". Returns {"method", "linears": [names],
    "embeddings": [names], "embedding_note", "bytes_before", "bytes_after"}, the bytes of
    the quantized tensors' weights (scales included)."""
    if method not in QUANT_METHODS:
        raise ConfigError(f"unknown int8 method {method!r}; choose one of {', '.join(QUANT_METHODS)}")
    _check(model, method)
    names = {id(m): n for n, m in model.named_modules()}
    linears: list[tuple[str, nn.Linear]] = []
    for _, path, name, mod in block_linears(model, targets):
        check_linear(mod, f"{path}.{name}")
        parts = [mod.down, mod.up] if isinstance(mod, LowRankLinear) else [mod]
        linears += [(names[id(p)], p) for p in parts]
    emb, note = _token_embedding(model) if embeddings else (None, "kept fp32 as asked")
    if embeddings and emb is None:
        log.info("%s: the token embedding stays fp32: %s", method, note)

    dynamic = method == "int8-dynamic"
    before = after = 0
    for name, lin in linears:
        new = Int8Linear.from_linear(lin, dynamic)
        _set(model, name, new)
        before += lin.weight.numel() * lin.weight.element_size()
        after += new.weight.numel() + new.weight_scale.numel() * 4
    quantized_embeddings = []
    if emb is not None:
        name = names[id(emb)]
        new = Int8Embedding.from_embedding(emb)
        _set(model, name, new)
        quantized_embeddings.append(name)
        before += emb.weight.numel() * emb.weight.element_size()
        after += new.weight.numel() + new.weight_scale.numel() * 4
    log.info("%s: %d linears%s to int8: %d -> %d bytes", method, len(linears),
             " and the token embedding" if quantized_embeddings else "", before, after)
    return {"method": method, "linears": [n for n, _ in linears], "embeddings": quantized_embeddings,
            "embedding_note": note, "bytes_before": before, "bytes_after": after}


def int8_weight(model: nn.Module, targets: Sequence[str] = FACTORISABLE, embeddings: bool = True) -> dict:
    """Weight-only int8 (a size method, slower than fp32): see `quantize`."""
    return quantize(model, "int8-weight", targets, embeddings)


def int8_dynamic(model: nn.Module, targets: Sequence[str] = FACTORISABLE, embeddings: bool = True) -> dict:
    """Dynamic int8 for CPU inference (int8 weights, activations quantized per call): see `quantize`."""
    return quantize(model, "int8-dynamic", targets, embeddings)


def quantization_record(model: nn.Module) -> dict | None:
    """What `replay_quantization` needs to rebuild the int8 modules of `model` (None when
    it has none): {"method", "linears": [module names], "embeddings": [module names]}."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    embs = [n for n, m in model.named_modules() if isinstance(m, Int8Embedding)]
    if not linears and not embs:
        return None
    modes = {m.dynamic for _, m in linears}
    if len(modes) > 1:
        raise ConfigError("the model mixes weight-only and dynamic int8 linears; quantize with one method")
    method = "int8-dynamic" if modes == {True} else "int8-weight"
    return {"method": method, "linears": [n for n, _ in linears], "embeddings": embs}


def replay_quantization(model: nn.Module, record: dict, source: str = "compress.json") -> None:
    """Put the int8 modules named in `record` (a `quantization_record`) in place of the fp32
    ones a freshly built model has, with the same shapes, before its weights are loaded."""
    method = record.get("method")
    if method not in QUANT_METHODS:
        raise CheckpointError(f"{source}: unknown quantization method {method!r} (this zerolm knows "
                              f"{', '.join(QUANT_METHODS)}); was it written by a newer zerolm?")
    dynamic = method == "int8-dynamic"
    for kind, names in (("linear", record.get("linears", [])), ("embedding", record.get("embeddings", []))):
        for name in names:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(f"{source}: the quantized module {name!r} is not in the model the config "
                                      "builds; the directory's files do not belong together") from None
            device = next(mod.parameters()).device
            if kind == "linear" and isinstance(mod, nn.Linear):
                new = Int8Linear(mod.in_features, mod.out_features, mod.bias is not None, dynamic, device)
            elif kind == "embedding" and isinstance(mod, nn.Embedding):
                new = Int8Embedding(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, device)
            else:
                raise CheckpointError(f"{source}: {name!r} is recorded as an int8 {kind} but the model builds "
                                      f"a {type(mod).__name__} there")
            _set(model, name, new)
