"""T5: an encoder-decoder Transformer that reads one text and writes another.

Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (2020), in its v1.1 form. Pre-LN blocks with RMSNorm (no mean subtraction,
no biases anywhere), no absolute positions: a learned bias per head and relative-distance
bucket is added to every attention score, computed once per stack and shared by all its
layers. The decoder's blocks attend causally to the target so far (KV cache), then to
the encoder's output (cross-attention, whose keys and values are computed once per
source), then feed forward (plain ReLU in v1.0, gated GELU in v1.1). Attention scores
are not scaled by 1/sqrt(Dh): T5 folds that factor into the initialisation.

`T5` is the body: `forward` encodes (ids -> encoder states, so classification and
tagging heads work on it as on any body) and `decode` runs the decoder over those
states. `Seq2SeqLM` adds the LM head and the loss on target tokens.

Shape letters: B batch, T target (decoder) length, S source length, K keys, D d_model,
H heads, Dh head size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.models.body import Body, BodyOutput, Prefix
from zerolm.models.config import LayerShape, ModelConfig
from zerolm.models.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    attend,
    merge_heads,
    split_heads,
)
from zerolm.models.losses import linear_cross_entropy

IGNORE_INDEX = -100  # label of target positions without a loss (padding)


def relative_buckets(rel: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each relative distance key - query (T5's scheme): exact buckets for short
    distances, logarithmically wider ones up to `max_distance`, one bucket beyond. The
    encoder splits the buckets between keys before and after the query; the decoder only
    sees keys before it."""
    out = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        out += (rel > 0).long() * n_buckets
        n = rel.abs()
    else:
        n = (-rel).clamp(min=0)
    exact = n_buckets // 2
    # log-spaced buckets for exact <= n < max_distance (n clamped to 1 to keep log finite)
    far = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (n_buckets - exact)).long()
    far = far.clamp(max=n_buckets - 1)
    return out + torch.where(n < exact, n, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to the attention scores: (1, H, T, K)."""

    def __init__(self, cfg: ModelConfig, n_heads: int, bidirectional: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.rel_buckets, n_heads))  # (buckets, H)
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.rel_buckets, cfg.rel_max_distance

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """q_pos (T,), k_pos (K,) absolute positions -> bias (1, H, T, K)."""
        rel = k_pos[None, :] - q_pos[:, None]  # (T, K)
        b = relative_buckets(rel, self.bidirectional, self.n_buckets, self.max_distance)
        return self.weight[b].permute(2, 0, 1)[None]  # (1, H, T, K)


class CrossAttention(nn.Module):
    """Decoder queries over the encoder's states; keys and values computed once per
    source (the cache keeps them while the target grows)."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        self.n_heads, self.head_dim = shape.n_heads, shape.head_dim
        inner = shape.n_heads * shape.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)
        self.attn_dropout = cfg.attn_dropout

    def memory(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, Dh) of the encoder states enc (B, S, D)."""
        return split_heads(self.k_proj(enc), self.n_heads), split_heads(self.v_proj(enc), self.n_heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, need_probs: bool = False):
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, Dh)
        dropout = self.attn_dropout if self.training else 0.0
        y, probs = attend(q, kv[0], kv[1], mask, False, dropout, need_probs, scale=1.0)
        return self.o_proj(merge_heads(y)), probs  # (B, T, D)


class EncoderBlock(nn.Module):
    """x + attn(norm(x)) with the shared position bias, then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = MultiHeadAttention(cfg, shape, scale=1.0)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg, shape)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, mask, bias, prefix=None, need_probs: bool = False):
        a, probs = self.attn(self.attn_norm(x), mask=mask, prefix=prefix, need_probs=need_probs, bias=bias)
        x = x + self.resid_dropout(a)
        return x + self.mlp(self.mlp_norm(x)), probs


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the source, feed-forward; each pre-norm."""

    def __init__(self, cfg: ModelConfig, shape: LayerShape):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = MultiHeadAttention(cfg, shape, scale=1.0)
        self.cross_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg, shape)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg, shape)
        self.resid_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, mask, bias, memory, memory_mask, cache=None, layer: int = 0):
        a, _ = self.attn(self.attn_norm(x), mask=mask, causal=True, cache=cache, layer=layer, bias=bias)
        x = x + self.resid_dropout(a)
        c, _ = self.cross_attn(self.cross_norm(x), memory, memory_mask)
        x = x + self.resid_dropout(c)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class Seq2SeqCache:
    """What decoding one token at a time keeps: the decoder's self-attention keys and
    values (grown by one position per step) and the cross-attention keys and values of
    the source (computed on the first step). `reorder` keeps or repeats rows (finished
    rows leave, beam search picks each beam's parent)."""

    self_kv: KVCache
    memory: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (B, H, S, Dh)
    memory_mask: torch.Tensor | None = None  # bool (B, 1, 1, S)

    @property
    def length(self) -> int:
        return self.self_kv.length

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows of both caches."""
        self.self_kv.reorder(rows)
        self.reorder_memory(rows)

    def reorder_memory(self, rows: torch.Tensor) -> None:
        """Keep these rows of the source's keys and values only (a beam search changes them
        only when a source leaves: every beam of a source reads the same source)."""
        if self.memory is not None:
            self.memory = [(k[rows], v[rows]) for k, v in self.memory]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask[rows]


def source_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Bool key mask (B, 1, 1, S) hiding source padding, or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, None, None, :].bool()


class T5Decoder(nn.Module):
    """The decoder stack: target ids so far + encoder states -> final-norm states (B, T, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.blocks = nn.ModuleList(DecoderBlock(cfg, cfg.layer(0)) for _ in range(cfg.decoder_layers))
        self.rel_pos = RelativePositionBias(cfg, cfg.n_heads, bidirectional=False)
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def layer_shapes(self) -> list[tuple[int, int]]:
        return [(self.config.n_heads, self.config.default_head_dim)] * len(self.blocks)

    def memory(self, enc: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys and values (B, H, S, Dh) of every block, for encoder states
        (B, S, D): what the first decoding step computes and the cache keeps."""
        return [blk.cross_attn.memory(enc) for blk in self.blocks]

    def forward(self, x: torch.Tensor, enc: torch.Tensor | None, enc_mask: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None, cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """x (B, T, D) target embeddings; enc (B, S, D) encoder states (None when the cache
        already holds their keys and values); attention_mask (B, past + T) over targets."""
        B, T, _ = x.shape
        past = cache.length if cache is not None else 0
        if cache is not None and cache.memory is not None:
            memory, memory_mask = cache.memory, cache.memory_mask
        else:
            if enc is None:
                raise ValueError("the decoder needs the encoder states on its first call")
            memory = self.memory(enc)
            memory_mask = source_mask(enc_mask)
            if cache is not None:
                cache.memory, cache.memory_mask = memory, memory_mask
        pos = torch.arange(past + T, device=x.device)
        bias = self.rel_pos(pos[past:], pos)  # (1, H, T, past + T)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            S = past + T
            keep = attention_mask[:, None, None, -S:].bool() & (pos[None, :] <= pos[past:, None])[None, None]
            mask = keep | (pos[None, :] == pos[past:, None])[None, None]  # a query always sees itself
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, bias, memory[i], memory_mask,
                      cache=cache.self_kv if cache is not None else None, layer=i)
        if cache is not None:
            cache.self_kv.length += T
        return self.dropout(self.final_norm(x))


class T5(Body):
    """The encoder-decoder body. `forward` encodes: ids (B, S) -> encoder states (B, S, D);
    `decode` runs the decoder on target ids over encoder states."""

    causal = False  # what forward (the encoder) computes

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family != "t5":
            raise ValueError(f"T5 needs model.family 't5', got {cfg.family!r}")
        if cfg.layers:
            raise ValueError("model.layers (per-block shapes) is not supported by the t5 family")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by encoder and decoder
        self.blocks = nn.ModuleList(EncoderBlock(cfg, cfg.layer(i)) for i in range(cfg.n_layers))
        self.rel_pos = RelativePositionBias(cfg, cfg.n_heads, bidirectional=True)
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.decoder = T5Decoder(cfg)
        self._init(cfg)

    def _init(self, cfg: ModelConfig) -> None:
        """T5's initialisation (Mesh TensorFlow): each linear's std is 1/sqrt(fan_in), with
        the query's also carrying attention's 1/sqrt(Dh) (the scores are not scaled)."""
        f = cfg.init_std / 0.02  # init_std scales T5's stds as `initializer_factor` does
        nn.init.normal_(self.tok_emb.weight, std=f * 1.0)
        for m in self.modules():
            if isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, RelativePositionBias):
                nn.init.normal_(m.weight, std=f * cfg.d_model ** -0.5)
            elif isinstance(m, (MultiHeadAttention, CrossAttention)):
                inner = m.n_heads * m.head_dim
                for lin, std in ((m.q_proj, (cfg.d_model * m.head_dim) ** -0.5), (m.k_proj, cfg.d_model ** -0.5),
                                 (m.v_proj, cfg.d_model ** -0.5), (m.o_proj, max(inner, 1) ** -0.5)):
                    _normal(lin, f * std)
            elif isinstance(m, FeedForward):
                _normal(m.fc_in, f * cfg.d_model ** -0.5)
                if m.fc_gate is not None:
                    _normal(m.fc_gate, f * cfg.d_model ** -0.5)
                _normal(m.fc_out, f * max(m.fc_out.in_features, 1) ** -0.5)

    def layer_shapes(self) -> list[tuple[int, int]]:
        return self.decoder.layer_shapes()  # the cache is the decoder's

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        *,
        inputs_embeds: torch.Tensor | None = None,  # (B, S, D) token embeddings
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # ignored: T5 has no segments
        position_ids: torch.Tensor | None = None,  # (B or 1, S) for the relative bias; default 0..S-1
        cache: KVCache | None = None,  # ignored: the encoder sees the whole source at once
        prefix: Prefix | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BodyOutput:
        x = self._inputs(input_ids, inputs_embeds)  # (B, S, D)
        S = x.shape[1]
        pos = torch.arange(S, device=x.device) if position_ids is None else position_ids[0]
        bias = self.rel_pos(pos, pos)  # (1, H, S, S)
        mask = source_mask(attention_mask)
        x = self.dropout(x)
        hidden = [x] if output_hidden_states else None
        attns = [] if output_attentions else None
        for i, block in enumerate(self.blocks):
            x, probs = block(x, mask, bias, prefix=prefix[i] if prefix is not None else None,
                             need_probs=output_attentions)
            if hidden is not None and i < len(self.blocks) - 1:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        x = self.dropout(self.final_norm(x))
        if hidden is not None:
            hidden.append(x)
        return BodyOutput(x, tuple(hidden) if hidden is not None else None,
                          tuple(attns) if attns is not None else None)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor | None = None,
               encoder_mask: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None,
               cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """Decoder states (B, T, D) of target ids (B, T) over the encoder states (B, S, D)
        (not needed once `cache` holds their keys and values)."""
        return self.decoder(self.tok_emb(decoder_input_ids), encoder_states, encoder_mask,
                            attention_mask=attention_mask, cache=cache)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the encoder states over real tokens (B, D): T5 has no [CLS]."""
        m = (attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
        m = m[:, :, None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def new_cache(self, batch: int, max_len: int | None = None) -> Seq2SeqCache:
        p = self.final_norm.weight  # the compute dtype (an int8 token embedding is not)
        return Seq2SeqCache(KVCache(self.layer_shapes(), batch, max_len or self.config.max_seq_len,
                                    device=p.device, dtype=p.dtype))


def _normal(lin: nn.Module, std: float) -> None:
    for n, p in lin.named_parameters():
        if n.endswith("weight") and p.numel():
            nn.init.normal_(p, std=std)
        elif n.endswith("bias"):
            nn.init.zeros_(p)


def shift_right(labels: torch.Tensor, start_id: int) -> torch.Tensor:
    """Decoder inputs (B, T) of labels (B, T): the start token, then the labels but the
    last (teacher forcing); ignored positions become the start (padding) id."""
    out = labels.new_full(labels.shape, start_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == IGNORE_INDEX, start_id)


class Seq2SeqLM(nn.Module):
    """The T5 body with an LM head over the decoder: logits (B, T, V) of the next target
    token, or the mean cross-entropy over target tokens when `labels` are given (computed
    in vocabulary chunks inside forward, as CausalLM's). The decoder starts from the pad
    token, as T5's does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.body = T5(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.body.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std / 0.02)  # T5 v1.1: std 1 * factor

    @property
    def start_id(self) -> int:
        return self.config.pad_id

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               **body_kwargs) -> torch.Tensor:
        """Encoder states (B, S, D)."""
        return self.body(input_ids, attention_mask=attention_mask, **body_kwargs).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S) source
        *,
        attention_mask: torch.Tensor | None = None,  # (B, S)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T); default labels shifted right
        decoder_attention_mask: torch.Tensor | None = None,  # (B, past + T)
        labels: torch.Tensor | None = None,  # (B, T) target ids, IGNORE_INDEX where none
        encoder_states: torch.Tensor | None = None,  # (B, S, D): skip the encoder
        cache: Seq2SeqCache | None = None,
        label_smoothing: float = 0.0,  # with labels: share of the target mass spread over the vocabulary
        **body_kwargs,  # inputs_embeds, prefix: as the body takes them
    ) -> torch.Tensor:
        """Logits (B, T, V); with `labels`, the mean cross-entropy over target tokens."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.start_id)
        if encoder_states is None and not (cache is not None and cache.memory is not None):
            encoder_states = self.encode(input_ids, attention_mask, **body_kwargs)
        h = self.body.decode(decoder_input_ids, encoder_states, attention_mask,
                             attention_mask=decoder_attention_mask, cache=cache)  # (B, T, D)
        if labels is None:
            return self.head(h)
        if label_smoothing > 0:  # needs every logit: the (B T, V) logits are formed
            return F.cross_entropy(self.head(h).flatten(0, 1).float(), labels.flatten(),
                                   ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
        return linear_cross_entropy(self.head_input(h).flatten(0, 1), self.lm_head.weight, labels.flatten(),
                                    IGNORE_INDEX)

    def decoder_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       labels: torch.Tensor) -> torch.Tensor:
        """The decoder's final states (B, T, D) on the target `labels` (teacher forcing)."""
        enc = self.encode(input_ids, attention_mask)
        return self.body.decode(shift_right(labels, self.start_id), enc, attention_mask)

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder states as the LM head reads them: T5 rescales them by d_model^-0.5 before
        a head tied to the embeddings (std-1 rows)."""
        return h * self.config.d_model ** -0.5 if self.config.tie_embeddings else h

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) from decoder states (B, T, D)."""
        return self.lm_head(self.head_input(h))

    def new_cache(self, batch: int, max_len: int | None = None) -> Seq2SeqCache:
        return self.body.new_cache(batch, max_len)
