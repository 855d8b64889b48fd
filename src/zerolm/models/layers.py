"""Building blocks shared by the encoder and the decoder.

Shape letters: B batch, T query length, S key length (past + T), D d_model,
H heads, Dh head size (D // H), F feed-forward width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.models.config import ModelConfig


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


class KVCache:
    """Pre-allocated keys and values of every layer, for incremental decoding.

    `length` counts the positions already stored; the decoder advances it once per
    forward, after every layer has appended its keys and values.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=None):
        shape = (batch, n_heads, max_len, head_dim)  # (B, H, Tmax, Dh)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
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


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with separate q/k/v/o projections."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attn_dropout = cfg.attn_dropout

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        mask: torch.Tensor | None = None,  # bool (B or 1, 1, T, S), True = may attend
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.n_heads)
        v = split_heads(self.v_proj(x), self.n_heads)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, S, Dh)
        y = attend(q, k, v, mask, causal, self.attn_dropout if self.training else 0.0)  # (B, H, T, Dh)
        return self.o_proj(merge_heads(y))  # (B, T, D)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, Dh)."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, D)."""
    B, H, T, Dh = y.shape
    return y.transpose(1, 2).reshape(B, T, H * Dh)


def attend(
    q: torch.Tensor,  # (B, H, T, Dh)
    k: torch.Tensor,  # (B, H, S, Dh), S >= T
    v: torch.Tensor,  # (B, H, S, Dh)
    mask: torch.Tensor | None = None,  # bool (B or 1, 1, T or 1, S), True = may attend
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention (B, H, T, Dh) of T queries over S keys.

    The queries are the last T of the S key positions (the keys before them come from a
    KV cache); `causal` lets query i see keys 0..S - T + i. A given `mask` must already
    hold causality: it replaces the causal rule.
    """
    T, S = q.shape[2], k.shape[2]
    is_causal = False
    if causal and mask is None:
        if S == T:
            is_causal = T > 1  # SDPA's causal mask is aligned top-left: right only when S == T
        elif T > 1:
            mask = causal_mask(T, S, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          dropout_p=dropout_p)


def causal_mask(t: int, s: int, device=None) -> torch.Tensor:
    """Bool (1, 1, T, S): query i (at absolute position s - t + i) sees keys 0..s - t + i."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    return (k_pos <= q_pos)[None, None]


class FeedForward(nn.Module):
    """Position-wise feed-forward: D -> F -> D with a GELU in between."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT / GPT-2 initialisation: N(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, PositionEmbedding) and module.learned:
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
