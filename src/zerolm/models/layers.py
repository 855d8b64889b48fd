"""Building blocks shared by every family: embeddings, attention, feed-forward, caches.

Shape letters: B batch, T query length, S key length (prefix + past + T), D d_model,
H heads, Dh head size, F feed-forward width, P prefix length, V vocabulary, r rank.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.models.config import LayerShape, ModelConfig


def activation_fn(name: str):
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed position encodings of "Attention Is All You Need" (sin on even, cos on odd)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table  # (P, D)


class PositionEmbedding(nn.Module):
    """Learned (BERT, GPT-2) or fixed sinusoidal positions, looked up by position id."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.learned = cfg.position == "learned"
        if self.learned:
            self.weight = nn.Parameter(torch.empty(cfg.max_seq_len, cfg.d_model))
        else:
            # not persistent: it is a function of the config, so it never enters checkpoints
            self.register_buffer("table", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight if self.learned else self.table)


class LowRankLinear(nn.Module):
    """A linear D_in -> D_out factorised through rank r: x -> up(down(x)).

    What low-rank compression puts in place of a full linear (the layer's `ranks` in the
    config records it, so the model rebuilds with the same shapes). r (D_in + D_out)
    weights instead of D_in D_out.
    """

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        self.down = nn.Linear(d_in, rank, bias=False)  # (r, D_in)
        self.up = nn.Linear(rank, d_out, bias=bias)  # (D_out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def linear(d_in: int, d_out: int, bias: bool, rank: int | None = None) -> nn.Module:
    """A full linear, or a factorised one when the config gives this linear a rank."""
    if rank is not None:
        return LowRankLinear(d_in, d_out, rank, bias)
    with warnings.catch_warnings():  # a fully pruned block has (0, D) weights: nothing to init
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(d_in, d_out, bias=bias)


class KVCache:
    """Pre-allocated keys and values of every layer, for incremental decoding.

    Each layer has its own (H, Dh), so pruned models cache what they attend with.
    `length` counts the positions already stored (the same for every row: batched
    prompts are left-padded and the attention mask hides the padding); the body advances
    it once per forward, after every layer has appended its keys and values.
    """

    def __init__(self, shapes: list[tuple[int, int]], batch: int, max_len: int, device=None, dtype=None):
        # (B, H, Tmax, Dh) per layer
        self.k = [torch.zeros((batch, h, max_len, dh), device=device, dtype=dtype) for h, dh in shapes]
        self.v = [torch.zeros((batch, h, max_len, dh), device=device, dtype=dtype) for h, dh in shapes]
        self.max_len = max_len
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H, S, Dh)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows, in this order (rows that finished leave the batch; a
        beam search repeats the rows of the beams it goes on with). Only the filled
        positions are copied, into the buffers' first rows when they fit."""
        n, L = len(rows), self.length
        for caches in (self.k, self.v):
            for i, buf in enumerate(caches):
                picked = buf[:, :, :L].index_select(0, rows)  # (n, H, L, Dh): a copy
                if n > buf.shape[0]:
                    buf = buf.new_zeros((n, *buf.shape[1:]))
                buf = buf[:n]
                buf[:, :, :L] = picked
                caches[i] = buf


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with separate q/k/v/o projections.

    q, k and v project D -> H * Dh and o projects back to D; H * Dh need not equal D (a
    model whose heads were pruned keeps D and loses heads).
    """

    def __init__(self, cfg: ModelConfig, shape: LayerShape, scale: float | None = None):
        super().__init__()
        self.n_heads = shape.n_heads
        self.head_dim = shape.head_dim
        self.scale = scale  # of q k^T; None: 1 / sqrt(Dh) (T5 folds it into the init: 1.0)
        inner, r = shape.n_heads * shape.head_dim, shape.ranks
        self.q_proj = linear(cfg.d_model, inner, cfg.bias, r.get("attn.q_proj"))
        self.k_proj = linear(cfg.d_model, inner, cfg.bias, r.get("attn.k_proj"))
        self.v_proj = linear(cfg.d_model, inner, cfg.bias, r.get("attn.v_proj"))
        self.o_proj = linear(inner, cfg.d_model, cfg.bias, r.get("attn.o_proj"))
        self.attn_dropout = cfg.attn_dropout

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        mask: torch.Tensor | None = None,  # bool (B or 1, 1, T or 1, S), True = may attend
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,  # keys, values (B or 1, H, P, Dh)
        need_probs: bool = False,
        bias: torch.Tensor | None = None,  # (B or 1, H, T, S) added to the scores (relative positions)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output (B, T, D), attention probabilities (B, H, T, S) when `need_probs`)."""
        if self.n_heads == 0:  # every head pruned: the block adds only o_proj's bias
            B, T, _ = x.shape
            S = T + (cache.length if cache is not None else 0) + (prefix[0].shape[2] if prefix else 0)
            if cache is not None:
                cache.append(layer, x.new_zeros(B, 0, T, self.head_dim), x.new_zeros(B, 0, T, self.head_dim))
            probs = x.new_zeros(B, 0, T, S) if need_probs else None
            return self.o_proj(x.new_zeros(B, T, 0)), probs
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.n_heads)
        v = split_heads(self.v_proj(x), self.n_heads)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, past + T, Dh)
        if prefix is not None:
            # P keys / values every query sees, in front of the sequence's own; a causal
            # rule stays right: query i still sees the first S - T + i keys (see causal_mask)
            pk, pv = prefix
            B = x.shape[0]
            k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # (B, H, P + S, Dh)
            v = torch.cat([pv.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
            P = pk.shape[2]
            if mask is not None:
                mask = F.pad(mask, (P, 0), value=True)
            if bias is not None:  # prefix positions carry no relative-position bias
                bias = F.pad(bias, (P, 0))
        dropout = self.attn_dropout if self.training else 0.0
        y, probs = attend(q, k, v, mask, causal, dropout, need_probs, bias=bias,
                          scale=self.scale)  # (B, H, T, Dh)
        return self.o_proj(merge_heads(y)), probs  # (B, T, D)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H * Dh) -> (B, H, T, Dh)."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    B, H, T, Dh = y.shape
    return y.transpose(1, 2).reshape(B, T, H * Dh)


def attend(
    q: torch.Tensor,  # (B, H, T, Dh)
    k: torch.Tensor,  # (B, H, S, Dh), S >= T
    v: torch.Tensor,  # (B, H, S, Dh)
    mask: torch.Tensor | None = None,  # bool (B or 1, 1, T or 1, S), True = may attend
    causal: bool = False,
    dropout_p: float = 0.0,
    need_probs: bool = False,
    *,
    bias: torch.Tensor | None = None,  # float (B or 1, H, T, S) added to the scores
    scale: float | None = None,  # of q k^T; None: 1 / sqrt(Dh)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention (B, H, T, Dh) of T queries over S keys.

    The queries are the last T of the S key positions (the keys before them come from a
    KV cache or a prefix); `causal` lets query i see keys 0..S - T + i. A given `mask`
    must already hold causality: it replaces the causal rule. With `need_probs` the
    probabilities softmax(q k^T / sqrt(Dh) + mask) (B, H, T, S) are formed explicitly and
    returned; otherwise SDPA's fused kernel runs and never forms them. A `bias` (T5's
    relative positions) joins the mask as one float mask: -inf where the bool mask hides.
    """
    T, S = q.shape[2], k.shape[2]
    if bias is not None:
        if causal and mask is None:
            mask = causal_mask(T, S, q.device)
        bias = bias.to(q.dtype)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))  # (B or 1, H, T, S)
        causal = False
    if need_probs:
        if causal and mask is None:
            mask = causal_mask(T, S, q.device)
        scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            scores = scores + mask  # (B, H, T, S)
        probs = scores.softmax(dim=-1)
        dropped = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
        return dropped @ v, probs
    is_causal = False
    if causal and mask is None:
        if S == T:
            is_causal = T > 1  # SDPA's causal mask is aligned top-left: right only when S == T
        elif T > 1:
            mask = causal_mask(T, S, q.device)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                       scale=scale)
    return y, None


def causal_mask(t: int, s: int, device=None) -> torch.Tensor:
    """Bool (1, 1, T, S): query i (at absolute position s - t + i) sees keys 0..s - t + i."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    return (k_pos <= q_pos)[None, None]


class FeedForward(nn.Module):
    """Position-wise feed-forward: D -> F -> D, fc_out(act(fc_in x)); with
    `cfg.gated_ffn` a gated unit fc_out(act(fc_gate x) * fc_in x) (Shazeer, "GLU Variants
    Improve Transformer", 2020; T5 v1.1's gated-GELU)."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        r = shape.ranks
        self.fc_in = linear(cfg.d_model, shape.d_ff, cfg.bias, r.get("mlp.fc_in"))
        self.fc_gate = linear(cfg.d_model, shape.d_ff, cfg.bias, r.get("mlp.fc_gate")) if cfg.gated_ffn else None
        self.act = activation_fn(cfg.activation)
        self.fc_out = linear(shape.d_ff, cfg.d_model, cfg.bias, r.get("mlp.fc_out"))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc_gate is not None:
            return self.dropout(self.fc_out(self.act(self.fc_gate(x)) * self.fc_in(x)))
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT / GPT-2 initialisation: N(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        if module.weight.numel():  # a pruned-away linear has no weights to draw
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, PositionEmbedding) and module.learned:
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:  # RMSNorm has none
            nn.init.zeros_(module.bias)
