"""Soft prompts and prefixes: prompt tuning and prefix tuning as transforms on a finished model.

Prompt tuning: Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning"
(2021). P trainable vectors take P input positions of the frozen body, as if they were
the embeddings of P extra tokens. The body's token embedding (`tok_emb`) is swapped for a
`PromptEmbedding` that owns the same `weight` (key `tok_emb.weight`, ties kept) plus the
trainable rows `tok_emb.prompt` (P, D), looked up by virtual ids V..V + P - 1. The body's
entry method is wrapped on this one instance (the class is untouched) to insert the
virtual ids into `input_ids` and extend `attention_mask`, `token_type_ids` and
`position_ids` to match, then to drop the P positions from the hidden states it returns:
every head sees (B, T, D) exactly as before. The entry is `hidden_states` when the body
has one (a GPT: its `forward` calls it, and heads call it directly, where forward hooks
would never fire), else `forward` (a Bert).

- Where: after [CLS] (position 1) in an encoder, so [CLS] pooling and per-token outputs
  keep their indices; first (position 0) in a decoder, so every real token sees it.
- Positions: the prompt takes input positions (zerolm.train.finetune reserves them in
  max_input_length): it sits at positions k..k + P - 1 and every real position from k on
  moves up by P (given `position_ids` are moved the same way).
- KV cache (decoder): the prompt enters the cache on the call that starts it
  (`cache.length == 0`); later calls insert nothing, their positions continue from
  `cache.length`, which counts the prompt. `new_cache` is wrapped to allocate P more
  positions, so callers size caches in real tokens. A given `attention_mask` covers the
  real tokens only, in every call; P ones are put in front of it.
- Init: rows of the token embedding at random vocabulary ids (Lester et al.'s "sampled
  vocab" init; the paper samples from the 5,000 most frequent tokens).

Prefix tuning: Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"
(2021). Every self-attention gets P trainable keys and values in front of its own; the
queries, and so the sequence length and positions, do not change. Each `attn` is swapped
for a `PrefixAttention` that holds the same q_proj / k_proj / v_proj / o_proj modules
(base keys unchanged, LoRA on them still works) plus `prefix_k` and `prefix_v` (P, D).
Every query sees every prefix position (padding and causal masks are extended on the
left); a KV cache holds real positions only and the prefix is put in front of it on each
call. Li & Liang train the prefix through an MLP reparametrisation for stability; here it
is trained directly (as P-tuning v2, Liu et al. 2022, does), which keeps the saved
parameters exactly the ones used at inference. Init: the keys and values of real tokens
(Li & Liang's "activations of real words"), from one no-grad pass of the body on random
token ids.

Shape letters: B batch, T tokens, P prompt (prefix) length, D d_model, H heads, Dh head
size, S key length (cache + T), V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.models.layers import KVCache, MultiHeadAttention, attend, merge_heads, split_heads
from zerolm.peft.match import find_modules, replace_module

log = logging.getLogger(__name__)

# index of the first prompt position, per model family: after [CLS] in the encoder, first
# in the decoder (a causal model only lets later tokens see it)
PROMPT_POSITION = {"bert": 1, "gpt": 0}


def find_body(model: nn.Module, what: str) -> tuple[str, nn.Module]:
    """The one module with a `tok_emb` and a `blocks` ModuleList (a Bert or a GPT)."""
    bodies = [(n, m) for n, m in model.named_modules()
              if isinstance(getattr(m, "tok_emb", None), nn.Module)
              and isinstance(getattr(m, "blocks", None), nn.ModuleList)]
    if len(bodies) != 1:
        found = "none" if not bodies else [n or "<root>" for n, _ in bodies]
        raise ValueError(f"{what} needs exactly one Transformer body (a module with the stable "
                         f"names `tok_emb` and `blocks`: a zerolm Bert or GPT) in "
                         f"{type(model).__name__}; found {found}")
    return bodies[0]


def _check_length(length: int, what: str) -> None:
    if length < 1:
        raise ValueError(f"{what} needs prompt_length >= 1, got {length}")


# --- prompt tuning ----------------------------------------------------------------------


class PromptEmbedding(nn.Module):
    """A token embedding whose ids V..V + P - 1 are P trainable soft-prompt rows."""

    def __init__(self, base: nn.Embedding, prompt: torch.Tensor, position: int):
        super().__init__()
        self.num_embeddings = base.num_embeddings  # V: real tokens only (the LM head's width)
        self.embedding_dim = base.embedding_dim
        self.padding_idx = base.padding_idx
        self.weight = base.weight  # (V, D): the same Parameter, key `tok_emb.weight`, ties kept
        self.prompt = nn.Parameter(prompt)  # (P, D)
        self.position = position  # index of the first prompt position in the body's input

    @property
    def length(self) -> int:
        return self.prompt.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        V = self.num_embeddings
        real = F.embedding(ids.clamp(max=V - 1), self.weight, self.padding_idx)  # (B, T, D)
        soft = F.embedding((ids - V).clamp(min=0), self.prompt)  # (B, T, D)
        return torch.where((ids >= V)[..., None], soft, real)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} + {self.length} soft, {self.embedding_dim}, position={self.position}"


def _insert(t: torch.Tensor, k: int, fill: torch.Tensor) -> torch.Tensor:
    """t (B, T, ...) with `fill` (B or 1, P, ...) put in front of index k: (B, T + P, ...)."""
    fill = fill.expand(t.shape[0], *fill.shape[1:])
    return torch.cat([t[:, :k], fill, t[:, k:]], dim=1)


def _with_prompt(entry: Callable, emb: PromptEmbedding) -> Callable:
    """`entry` (a body method returning hidden states (B, T, D)) with the soft prompt in."""
    sig = inspect.signature(entry)
    P, k, V = emb.length, emb.position, emb.num_embeddings

    @functools.wraps(entry)
    def prompted(body: nn.Module, *args, **kwargs) -> torch.Tensor:
        bound = sig.bind(body, *args, **kwargs)
        a = bound.arguments  # edits here change the call below
        ids = a["input_ids"]  # (B, T)
        T = ids.shape[1]
        cache: KVCache | None = a.get("cache")
        past = cache.length if cache is not None else 0
        insert = past == 0  # a cache that has seen tokens holds the prompt already
        total = past + T + (P if insert else 0)
        limit = body.config.max_seq_len
        if total > limit:
            raise ValueError(f"{total - P} tokens and the {P} soft-prompt positions exceed "
                             f"model.max_seq_len {limit}; shorten the input or "
                             "strategy.prompt_length")
        dev = ids.device
        if a.get("attention_mask") is not None:  # the caller's mask covers real tokens only
            mask = a["attention_mask"]
            a["attention_mask"] = _insert(mask, k, mask.new_ones(1, P))
        if insert:
            a["input_ids"] = _insert(ids, k, V + torch.arange(P, device=dev)[None])  # (B, T + P)
            if a.get("token_type_ids") is not None:  # the prompt is in segment A
                a["token_type_ids"] = _insert(a["token_type_ids"], k, a["token_type_ids"].new_zeros(1, P))
            if a.get("position_ids") is not None:
                pos = a["position_ids"]
                a["position_ids"] = _insert(
                    torch.cat([pos[:, :k], pos[:, k:] + P], 1), k, k + torch.arange(P, device=dev)[None])
        elif a.get("position_ids") is not None:
            a["position_ids"] = a["position_ids"] + P
        h = entry(*bound.args, **bound.kwargs)  # (B, T + P, D) or, cached, (B, T, D)
        if not insert:
            return h
        return h[:, P:] if k == 0 else torch.cat([h[:, :k], h[:, k + P:]], dim=1)  # (B, T, D)

    return prompted


def _cache_with_room(new_cache: Callable, length: int) -> Callable:
    """`new_cache(batch, max_len)` that also makes room for the prompt's keys and values."""
    sig = inspect.signature(new_cache)

    @functools.wraps(new_cache)
    def with_room(body: nn.Module, *args, **kwargs) -> KVCache:
        bound = sig.bind(body, *args, **kwargs)
        bound.arguments["max_len"] = (bound.arguments.get("max_len") or body.config.max_seq_len) + length
        return new_cache(*bound.args, **bound.kwargs)

    return with_room


def apply_prompt(model: nn.Module, length: int = 20) -> str:
    """Give the model's body a soft prompt of `length` positions (in place); returns its name.

    Does not touch `requires_grad`; see `zerolm.peft.apply_strategy` for that.
    """
    _check_length(length, "prompt tuning")
    name, body = find_body(model, "prompt tuning")
    if isinstance(body.tok_emb, PromptEmbedding):
        raise ValueError(f"{name or type(model).__name__} already has a soft prompt; "
                         "apply prompt tuning once")
    family = getattr(getattr(body, "config", None), "family", None)
    if family not in PROMPT_POSITION:
        raise ValueError(f"prompt tuning knows where the prompt goes for model families "
                         f"{sorted(PROMPT_POSITION)}, not {family!r}")
    if length > body.config.max_seq_len - 2:
        raise ValueError(f"prompt_length {length} leaves no room for tokens in model.max_seq_len "
                         f"{body.config.max_seq_len}")
    base = body.tok_emb
    with torch.no_grad():
        rows = torch.randint(base.weight.shape[0], (length,), device=base.weight.device)
        init = base.weight[rows].clone()  # (P, D)
    emb = PromptEmbedding(base, init, PROMPT_POSITION[family])
    body.tok_emb = emb
    # the class's own methods, bound to this instance: a deepcopy rebinds them to the copy
    entry = "hidden_states" if callable(getattr(type(body), "hidden_states", None)) else "forward"
    setattr(body, entry, types.MethodType(_with_prompt(getattr(type(body), entry), emb), body))
    if callable(getattr(type(body), "new_cache", None)):
        body.new_cache = types.MethodType(_cache_with_room(type(body).new_cache, length), body)
    # positions the input can no longer use (generation and prediction budget with this)
    body.reserved_positions = length
    log.info("soft prompt of %d positions at position %d of %s", length, emb.position,
             name or type(model).__name__)
    return name


# --- prefix tuning ----------------------------------------------------------------------


class PrefixAttention(nn.Module):
    """Self-attention whose keys and values start with P trainable prefix positions.

    Holds the wrapped attention's own projections, so their state-dict keys do not change.
    """

    def __init__(self, attn: MultiHeadAttention, prefix_k: torch.Tensor, prefix_v: torch.Tensor):
        super().__init__()
        self.n_heads = attn.n_heads
        self.head_dim = attn.head_dim
        self.attn_dropout = attn.attn_dropout
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.prefix_k = nn.Parameter(prefix_k)  # (P, D): the heads side by side, like k_proj's output
        self.prefix_v = nn.Parameter(prefix_v)  # (P, D)

    @property
    def length(self) -> int:
        return self.prefix_k.shape[0]

    def _prefix(self, p: torch.Tensor, batch: int) -> torch.Tensor:
        return split_heads(p[None], self.n_heads).expand(batch, -1, -1, -1)  # (B, H, P, Dh)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        mask: torch.Tensor | None = None,  # bool (B or 1, 1, T or 1, S), True = may attend
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B = x.shape[0]
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.n_heads)
        v = split_heads(self.v_proj(x), self.n_heads)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, S, Dh): the cache holds real positions only
        k = torch.cat([self._prefix(self.prefix_k, B), k], dim=2)  # (B, H, P + S, Dh)
        v = torch.cat([self._prefix(self.prefix_v, B), v], dim=2)
        if mask is not None:  # every query sees the whole prefix
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], self.length), mask], dim=-1)
        # with no mask, `attend`'s causal rule already lets every query see the P prefix
        # keys: they come before its position, like cached ones
        y = attend(q, k, v, mask, causal, self.attn_dropout if self.training else 0.0)  # (B, H, T, Dh)
        return self.o_proj(merge_heads(y))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"prefix_length={self.length}, n_heads={self.n_heads}"


@torch.no_grad()
def _real_token_keys_values(model: nn.Module, names: list[str], length: int) -> dict:
    """{attention name: (keys (P, D), values (P, D))} of the body run on random token ids."""
    _, body = find_body(model, "prefix tuning")
    vocab = body.tok_emb.weight.shape[0]
    n = min(length, body.config.max_seq_len)
    ids = torch.randint(vocab, (-(-length // n), n), device=body.tok_emb.weight.device)  # (R, n)
    got: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for name in names:
        attn = model.get_submodule(name)
        for which, proj in (("k", attn.k_proj), ("v", attn.v_proj)):
            def keep(module, args, out, key=(name, which)):
                got[key] = out.flatten(0, 1)[:length].clone()  # (R, n, D) -> (P, D)
            handles.append(proj.register_forward_hook(keep))
    training = body.training
    try:
        body.eval()
        body(ids)
    finally:
        body.train(training)
        for h in handles:
            h.remove()
    missing = [n for n in names if (n, "k") not in got]
    if missing:
        raise ValueError(f"prefix tuning: attention modules {missing[:3]} are not run by the body")
    return {n: (got[n, "k"], got[n, "v"]) for n in names}


def apply_prefix(model: nn.Module, length: int = 20) -> list[str]:
    """Give every self-attention (`attn`) `length` trainable prefix keys and values, in
    place; returns the wrapped module names.

    Does not touch `requires_grad`; see `zerolm.peft.apply_strategy` for that.
    """
    _check_length(length, "prefix tuning")
    names = find_modules(model, ("attn",), MultiHeadAttention)
    if not names:
        done = find_modules(model, ("attn",), PrefixAttention)
        why = "it has prefixes already; apply prefix tuning once" if done else (
            "it needs self-attention modules with the stable name `attn` (zerolm MultiHeadAttention)")
        raise ValueError(f"cannot apply prefix tuning to {type(model).__name__}: {why}")
    init = _real_token_keys_values(model, names, length)
    for name in names:
        replace_module(model, name, PrefixAttention(model.get_submodule(name), *init[name]))
    log.info("prefix of %d positions on %d attention modules", length, len(names))
    return names
