"""GPT: a decoder-only causal Transformer language model in the GPT-2 layout.

Radford et al., "Language Models are Unsupervised Multitask Learners" (2019): pre-LN
blocks (LayerNorm before attention and feed-forward, a final LayerNorm after the last
block), learned absolute positions, causal self-attention, and an LM head tied to the
token embedding. A KV cache makes decoding one token cost one position of work.

`GPT` is the body (ids -> final-norm hidden states); `CausalLM` puts the LM head on a
body and computes the next-token loss inside its forward, in vocabulary chunks.

Shape letters: B batch, T sequence length, S key length (prefix + past + T), D d_model,
V vocabulary, P prefix positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zerolm.models.body import Body, BodyOutput, Prefix, last_real_index
from zerolm.models.config import LayerShape, ModelConfig
from zerolm.models.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    PositionEmbedding,
    causal_mask,
    init_weights,
)
from zerolm.models.losses import linear_cross_entropy

IGNORE_INDEX = -100  # label of positions without a loss (padding, prompts)


class GPTBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): the pre-LN residual block."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(cfg, shape)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = FeedForward(cfg, shape)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0, prefix=None,
                need_probs: bool = False):
        a, probs = self.attn(self.attn_norm(x), mask=mask, causal=True, cache=cache, layer=layer,
                             prefix=prefix, need_probs=need_probs)
        x = x + self.resid_dropout(a)
        return x + self.mlp(self.mlp_norm(x)), probs


class GPT(Body):
    """The decoder body: ids (B, T) -> final-norm hidden states (B, T, D)."""

    causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family != "gpt":
            raise ValueError(f"GPT needs model.family 'gpt', got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = PositionEmbedding(cfg)
        self.emb_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(GPTBlock(cfg, cfg.layer(i)) for i in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        # GPT-2: scale the init of projections that write into the residual stream by
        # 1/sqrt(2 * n_layers), so the stream's variance does not grow with depth.
        for block in self.blocks:
            for lin in (block.attn.o_proj, block.mlp.fc_out):
                for w in (p for n, p in lin.named_parameters() if n.endswith("weight") and p.numel()):
                    nn.init.normal_(w, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        *,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D) token embeddings
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # ignored: GPT has no segments
        position_ids: torch.Tensor | None = None,  # (B, T); default past .. past + T - 1
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BodyOutput:
        x = self._inputs(input_ids, inputs_embeds)  # (B, T, D)
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds model.max_seq_len "
                             f"{self.config.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None]  # (1, T)
        x = self.emb_dropout(x + self.pos_emb(position_ids))  # (B, T, D)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # padding and causality in one bool mask (B, 1, T, S); a fully padded query
            # row would give NaN in SDPA, so every query may at least see itself.
            S = past + T
            keep = attention_mask[:, None, None, -S:].bool() & causal_mask(T, S, x.device)
            diag = torch.zeros(T, S, dtype=torch.bool, device=x.device)
            diag[torch.arange(T), torch.arange(past, S)] = True
            mask = keep | diag
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        for i, block in enumerate(self.blocks):
            x, probs = block(x, mask=mask, cache=cache, layer=i,
                             prefix=prefix[i] if prefix is not None else None,
                             need_probs=output_attentions)
            if hidden is not None and i < len(self.blocks) - 1:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        if cache is not None:
            cache.length += T
        x = self.final_norm(x)
        if hidden is not None:
            hidden.append(x)  # as GPT-2 reports it: the last block's output after the final norm
        return BodyOutput(x, tuple(hidden) if hidden is not None else None,
                          tuple(attns) if attns is not None else None)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The state (B, D) of each row's last real token: the only one that saw them all."""
        B, T, _ = hidden.shape
        last = last_real_index(attention_mask, B, T, hidden.device)
        return hidden[torch.arange(B, device=hidden.device), last]


class CausalLM(nn.Module):
    """A decoder body with an LM head: next-token logits (B, T, V), or the mean
    next-token loss when `labels` are given (the (B, T, V) logits are then never formed:
    the head and the loss run together in vocabulary chunks, inside forward, so data
    parallelism sees the head's weight used once per step)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.body = GPT(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.body.tok_emb.weight  # one matrix reads and writes tokens
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=cfg.init_std)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        *,
        attention_mask: torch.Tensor | None = None,  # (B, S)
        position_ids: torch.Tensor | None = None,  # (B, T)
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,  # (B, T) next-token ids, IGNORE_INDEX where none
        **body_kwargs,  # inputs_embeds, prefix, token_type_ids: as the body takes them
    ) -> torch.Tensor:
        """Logits (B, T, V); with `labels`, the mean cross-entropy (a scalar)."""
        h = self.body(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                      **body_kwargs).last_hidden_state  # (B, T, D)
        if labels is None:
            return self.lm_head(h)
        return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, labels.flatten(), IGNORE_INDEX)

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) from the body's final states (B, T, D)."""
        return self.lm_head(h)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return self.body.new_cache(batch, max_len)
