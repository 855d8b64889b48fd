"""BERT: a bidirectional Transformer encoder with masked-LM and sentence-pair heads.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (2019). Post-LN blocks (LayerNorm after each residual sum), token +
learned position + token-type embeddings, a tanh pooler on [CLS], an MLM head whose
decoder is tied to the token embedding, and a 2-way head for next-sentence (NSP) or
sentence-order (SOP, ALBERT) prediction. The layout matches Hugging Face BERT
checkpoints one-to-one (the key map lives in zerolm.convert).

Shape letters: B batch, T sequence length, D d_model, V vocabulary, N masked positions,
H heads, P prefix positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zerolm.models.body import Body, BodyOutput, Prefix
from zerolm.models.config import LayerShape, ModelConfig
from zerolm.models.layers import (
    FeedForward,
    MultiHeadAttention,
    PositionEmbedding,
    activation_fn,
    init_weights,
)


class BertBlock(nn.Module):
    """norm(x + attn(x)), then norm(x + mlp(x)): the post-LN residual block."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        self.attn = MultiHeadAttention(cfg, shape)
        self.attn_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = FeedForward(cfg, shape)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)

    def forward(self, x, mask=None, prefix=None, need_probs=False):
        a, probs = self.attn(x, mask=mask, prefix=prefix, need_probs=need_probs)
        x = self.attn_norm(x + self.attn_dropout(a))
        return self.mlp_norm(x + self.mlp(x)), probs


class Bert(Body):
    """The encoder: ids (B, T) -> contextual hidden states (B, T, D)."""

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family != "bert":
            raise ValueError(f"Bert needs model.family 'bert', got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_emb = PositionEmbedding(cfg)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.emb_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(BertBlock(cfg, cfg.layer(i)) for i in range(cfg.n_layers))
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        self.apply(lambda m: init_weights(m, cfg.init_std))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        *,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D) token embeddings
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T) segment A = 0, B = 1
        position_ids: torch.Tensor | None = None,  # (B, T)
        cache=None,
        prefix: Prefix | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BodyOutput:
        if cache is not None:
            raise ValueError("a Bert encoder attends in both directions: it has no KV cache")
        x = self._inputs(input_ids, inputs_embeds)  # (B, T, D)
        B, T, _ = x.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len {self.config.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)[None]  # (1, T)
        x = x + self.pos_emb(position_ids)
        if self.type_emb is not None:
            if token_type_ids is None:
                x = x + self.type_emb.weight[0]
            else:
                x = x + self.type_emb(token_type_ids)
        x = self.emb_dropout(self.emb_norm(x))
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T): keys a query may see
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        for i, block in enumerate(self.blocks):
            x, probs = block(x, mask=mask, prefix=prefix[i] if prefix is not None else None,
                             need_probs=output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        return BodyOutput(x, tuple(hidden) if hidden is not None else None,
                          tuple(attns) if attns is not None else None)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled [CLS] vector (B, D): tanh(dense(h[:, 0])), or h[:, 0] without a pooler."""
        if self.pooler is None:
            return hidden[:, 0]
        return torch.tanh(self.pooler(hidden[:, 0]))


class MLMHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm, applied before the tied vocabulary projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = activation_fn(cfg.activation)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


@dataclass
class BertPretrainingOutput:
    mlm_logits: torch.Tensor  # (N, V) at the selected positions, or (B, T, V)
    sentence_logits: torch.Tensor | None  # (B, 2) NSP / SOP logits, if the model has the head
    hidden_states: torch.Tensor  # (B, T, D)


class BertForPreTraining(nn.Module):
    """Encoder + MLM head (+ NSP/SOP head): the model that masked-LM pretraining trains."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.body = Bert(cfg)
        self.mlm_head = MLMHeadTransform(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)
        self.sentence_head = nn.Linear(cfg.d_model, 2) if cfg.sentence_head else None
        for m in (self.mlm_head, self.lm_head, self.sentence_head):
            if m is not None:
                m.apply(lambda mod: init_weights(mod, cfg.init_std))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.body.tok_emb.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,  # bool (B, T): where to predict tokens
    ) -> BertPretrainingOutput:
        h = self.body(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # (B, T, D)
        # Predicting only at masked positions skips ~85% of the V-wide projection,
        # which dominates the cost of small models.
        sel = h[mlm_positions] if mlm_positions is not None else h  # (N, D) or (B, T, D)
        mlm_logits = self.lm_head(self.mlm_head(sel))
        sentence_logits = None
        if self.sentence_head is not None:
            sentence_logits = self.sentence_head(self.body.pool(h))
        return BertPretrainingOutput(mlm_logits, sentence_logits, h)
