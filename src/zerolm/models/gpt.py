"""GPT: a decoder-only causal Transformer language model in the GPT-2 layout.

Radford et al., "Language Models are Unsupervised Multitask Learners" (2019): pre-LN
blocks (LayerNorm before attention and feed-forward, a final LayerNorm after the last
block), learned absolute positions, causal self-attention, and an LM head tied to the
token embedding. A KV cache makes decoding one token cost one position of work.

Shape letters: B batch, T sequence length, S key length (past + T), D d_model,
V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zerolm.models.config import ModelConfig
from zerolm.models.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    PositionEmbedding,
    causal_mask,
    init_weights,
)


class GPTBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): the pre-LN residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = FeedForward(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0):
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), mask=mask, causal=True,
                                             cache=cache, layer=layer))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Causal LM: input ids (B, T) -> next-token logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family != "gpt":
            raise ValueError(f"GPT needs model.family 'gpt', got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = PositionEmbedding(cfg)
        self.emb_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        # GPT-2: scale the init of projections that write into the residual stream by
        # 1/sqrt(2 * n_layers), so the stream's variance does not grow with depth.
        for block in self.blocks:
            for lin in (block.attn.o_proj, block.mlp.fc_out):
                nn.init.normal_(lin.weight, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix reads and writes tokens

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token, 0 = padding
        position_ids: torch.Tensor | None = None,  # (B, T); default past .. past + T - 1
        cache: KVCache | None = None,
        return_hidden: bool = False,  # final-norm states (B, T, D) instead of logits
    ) -> torch.Tensor:
        h = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        return h if return_hidden else self.lm_head(h)

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """Final-norm hidden states (B, T, D), before the LM head."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds model.max_seq_len "
                             f"{self.config.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]  # (1, T)
        x = self.emb_dropout(self.tok_emb(input_ids) + self.pos_emb(position_ids))  # (B, T, D)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # padding and causality in one bool mask (B, 1, T, S); a fully padded query
            # row would give NaN in SDPA, so every query may at least see itself.
            S = past + T
            keep = attention_mask[:, None, None, -S:].bool() & causal_mask(T, S, input_ids.device)
            diag = torch.zeros(T, S, dtype=torch.bool, device=input_ids.device)
            diag[torch.arange(T), torch.arange(past, S)] = True
            mask = keep | diag
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, cache=cache, layer=i)
        if cache is not None:
            cache.length += T
        return self.final_norm(x)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        c = self.config
        return KVCache(c.n_layers, batch, c.n_heads, max_len or c.max_seq_len, c.head_dim,
                       device=p.device, dtype=p.dtype)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights count once
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb.learned:
                n -= self.pos_emb.weight.numel()
        return n
