"""Soft prompts and prefixes: prompt tuning and prefix tuning as transforms on a finished model.

Both go through the body interface (`zerolm.models.body.Body`): a soft prompt enters as
`inputs_embeds`, a prefix as per-layer `prefix` keys and values. Each transform adds one
module to the body (`body.soft_prompt`, `body.prefix_kv`) that owns its trainable
parameters, and one forward pre-hook on the body that hands them to the body's own entry
point; no method is replaced and nothing else is stored on the model. A copy or a
reloaded model behaves the same (the hooks read the parameters from the body they run on).

Prompt tuning: Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning"
(2021). P trainable vectors take P input positions of the frozen body, as if they were
the embeddings of P extra tokens.
- Where: after the first token ([CLS], position 1) in a bidirectional body, so [CLS]
  pooling and per-token outputs keep their indices; first (position 0) in a causal body,
  so every real token sees it.
- Positions: the prompt takes input positions (`SoftPrompt.reserved_positions`, which
  generation and fine-tuning subtract from max_seq_len): it sits at positions k..k + P - 1
  and every real position from k on moves up by P (given `position_ids` are moved too).
- Outputs: the P positions are dropped from the hidden states the body returns, so every
  head sees (B, T, D) exactly as before (attention maps keep the prompt's key columns).
- KV cache (causal body): the prompt enters the cache on the call that starts it
  (`cache.length == 0`); later calls insert nothing and their positions continue from
  `cache.length`, which counts the prompt. Callers size caches in real tokens plus the
  reserved positions. A given `attention_mask` covers the real tokens only, in every
  call; P ones are put in at k.
- Init: rows of the token embedding at random vocabulary ids (Lester et al.'s "sampled
  vocab" init; the paper samples from the 5,000 most frequent tokens).

Prefix tuning: Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"
(2021). Every self-attention gets P trainable keys and values in front of its own; the
queries, and so the sequence length and positions, do not change. Every query sees
every prefix position; a KV cache holds real positions only. Li & Liang train the prefix
through an MLP reparametrisation for stability; here it is trained directly (as
P-tuning v2, Liu et al. 2022, does), which keeps the saved parameters exactly the ones
used at inference. Init: the keys and values of real tokens (Li & Liang's "activations
of real words"), from one no-grad pass of the body on random token ids.

Shape letters: B batch, T tokens, P prompt (prefix) length, D d_model, H heads, Dh head
size, V vocabulary.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zerolm.config import PromptConfig
from zerolm.models import Body, body_of
from zerolm.models.body import reserved_positions  # noqa: F401  (re-exported)
from zerolm.peft.base import Strategy

log = logging.getLogger(__name__)


def find_body(model: nn.Module, what: str) -> Body:
    try:
        return body_of(model)
    except TypeError as e:
        raise ValueError(f"{what} needs a Transformer body: {e}") from None


def _check_length(length: int, what: str) -> None:
    if length < 1:
        raise ValueError(f"{what} needs prompt_length >= 1, got {length}")


# --- prompt tuning ----------------------------------------------------------------------


class SoftPrompt(nn.Module):
    """P trainable input embeddings inserted at position `position` of every input."""

    def __init__(self, init: torch.Tensor, position: int):
        super().__init__()
        self.weight = nn.Parameter(init)  # (P, D)
        self.position = position

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    @property
    def reserved_positions(self) -> int:
        return self.length

    def extra_repr(self) -> str:
        return f"length={self.length}, dim={self.weight.shape[1]}, position={self.position}"


def _insert(t: torch.Tensor, k: int, fill: torch.Tensor) -> torch.Tensor:
    """t (B, T, ...) with `fill` (B or 1, P, ...) put in front of index k: (B, T + P, ...)."""
    fill = fill.expand(t.shape[0], *fill.shape[1:])
    return torch.cat([t[:, :k], fill, t[:, k:]], dim=1)


def _drop(t: torch.Tensor, k: int, P: int) -> torch.Tensor:
    """t (B, T + P, ...) without the P positions from index k."""
    return t[:, P:] if k == 0 else torch.cat([t[:, :k], t[:, k + P:]], dim=1)


def _prompt_pre_hook(body: Body, args: tuple, kwargs: dict):
    sp: SoftPrompt = body.soft_prompt
    P, k = sp.length, sp.position
    if args:  # input_ids given positionally
        kwargs = {**kwargs, "input_ids": args[0]}
        args = args[1:]
    ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
    x = body.embed(ids) if embeds is None else embeds  # (B, T, D)
    cache = kwargs.get("cache")
    past = cache.length if cache is not None else 0
    insert = past == 0  # a cache that has seen tokens holds the prompt already
    T = x.shape[1]
    limit = body.config.max_seq_len
    if past + T + (P if insert else 0) > limit:
        raise ValueError(f"{past + T - (0 if insert else P)} tokens and the {P} soft-prompt positions "
                         f"exceed model.max_seq_len {limit}; shorten the input or strategy.prompt_length")
    dev = x.device
    if kwargs.get("attention_mask") is not None:  # the caller's mask covers real tokens only
        mask = kwargs["attention_mask"]
        kwargs["attention_mask"] = _insert(mask, k, mask.new_ones(1, P))
    if insert:
        x = _insert(x, k, sp.weight[None].to(x.dtype))  # (B, T + P, D)
        if kwargs.get("token_type_ids") is not None:  # the prompt is in segment A
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = _insert(tt, k, tt.new_zeros(1, P))
        if kwargs.get("position_ids") is not None:
            pos = kwargs["position_ids"]
            kwargs["position_ids"] = _insert(torch.cat([pos[:, :k], pos[:, k:] + P], 1), k,
                                             k + torch.arange(P, device=dev)[None])
    elif kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + P
    kwargs["input_ids"], kwargs["inputs_embeds"] = None, x
    return args, kwargs


def _prompt_hook(body: Body, args: tuple, kwargs: dict, out):
    sp: SoftPrompt = body.soft_prompt
    # `kwargs` are the ones the pre-hook made: the prompt went in iff this call started its
    # cache (which now holds exactly this call's positions) or ran without one
    cache = kwargs.get("cache")
    if cache is not None and cache.length != kwargs["inputs_embeds"].shape[1]:
        return out
    P, k = sp.length, sp.position
    out.last_hidden_state = _drop(out.last_hidden_state, k, P)
    if out.hidden_states is not None:
        out.hidden_states = tuple(_drop(h, k, P) for h in out.hidden_states)
    if out.attentions is not None:  # drop the prompt's query rows; its key columns stay
        out.attentions = tuple(a[:, :, P:] if k == 0 else torch.cat([a[:, :, :k], a[:, :, k + P:]], 2)
                               for a in out.attentions)
    return out


def apply_prompt(model: nn.Module, length: int = 20) -> SoftPrompt:
    """Give the model's body a soft prompt of `length` positions (in place); returns it.

    Does not touch `requires_grad`; see `zerolm.peft.apply_strategy` for that.
    """
    _check_length(length, "prompt tuning")
    body = find_body(model, "prompt tuning")
    if isinstance(getattr(body, "soft_prompt", None), SoftPrompt):
        raise ValueError(f"{type(model).__name__} already has a soft prompt; apply prompt tuning once")
    if length > body.config.max_seq_len - 2:
        raise ValueError(f"prompt_length {length} leaves no room for tokens in model.max_seq_len "
                         f"{body.config.max_seq_len}")
    w = body.tok_emb.weight
    with torch.no_grad():
        rows = torch.randint(w.shape[0], (length,), device=w.device)
        init = w[rows].clone()  # (P, D)
    sp = SoftPrompt(init, position=0 if body.causal else 1)
    body.soft_prompt = sp
    body.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True)
    body.register_forward_hook(_prompt_hook, with_kwargs=True)
    log.info("soft prompt of %d positions at position %d", length, sp.position)
    return sp


# --- prefix tuning ----------------------------------------------------------------------


class PrefixKV(nn.Module):
    """P trainable keys and values for every block's self-attention.

    keys[l] and values[l] are (P, H_l * Dh_l): the heads side by side, like k_proj's output.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], shapes: list[tuple[int, int]]):
        super().__init__()
        self.keys = nn.ParameterList(nn.Parameter(k) for k in keys)
        self.values = nn.ParameterList(nn.Parameter(v) for v in values)
        self.shapes = list(shapes)  # (heads, head size) per block

    @property
    def length(self) -> int:
        return self.keys[0].shape[0]

    def per_layer(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) of (1, H_l, P, Dh_l) for every block: the body's `prefix`."""
        P = self.length
        return [(k.view(1, P, h, dh).transpose(1, 2), v.view(1, P, h, dh).transpose(1, 2))
                for k, v, (h, dh) in zip(self.keys, self.values, self.shapes)]

    def extra_repr(self) -> str:
        return f"length={self.length}, layers={len(self.shapes)}"


def _prefix_pre_hook(body: Body, args: tuple, kwargs: dict):
    if kwargs.get("prefix") is not None:
        raise ValueError("this body has prefix tuning: it supplies the prefix itself")
    return args, {**kwargs, "prefix": body.prefix_kv.per_layer()}


@torch.no_grad()
def _real_token_keys_values(body: Body, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values (P, H_l * Dh_l) of every block, from the body run on random ids."""
    vocab = body.tok_emb.weight.shape[0]
    n = min(length, body.config.max_seq_len)
    ids = torch.randint(vocab, (-(-length // n), n), device=body.tok_emb.weight.device)  # (R, n)
    got: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, block in enumerate(body.blocks):
        for which, proj in (("k", block.attn.k_proj), ("v", block.attn.v_proj)):
            def keep(module, args, out, key=(i, which)):
                got[key] = out.flatten(0, 1)[:length].clone()  # (R, n, H * Dh) -> (P, H * Dh)
            handles.append(proj.register_forward_hook(keep))
    training = body.training
    try:
        body.eval()
        body(ids)
    finally:
        body.train(training)
        for h in handles:
            h.remove()
    # a block whose heads were all pruned runs no projection: its prefix is empty (P, 0)
    dev = body.tok_emb.weight.device
    empty = torch.zeros(length, 0, device=dev)
    L = len(body.blocks)
    return [got.get((i, "k"), empty) for i in range(L)], [got.get((i, "v"), empty) for i in range(L)]


def apply_prefix(model: nn.Module, length: int = 20) -> PrefixKV:
    """Give every self-attention of the model's body `length` trainable prefix keys and
    values, in place; returns the module that holds them.

    Does not touch `requires_grad`; see `zerolm.peft.apply_strategy` for that.
    """
    _check_length(length, "prefix tuning")
    body = find_body(model, "prefix tuning")
    if isinstance(getattr(body, "prefix_kv", None), PrefixKV):
        raise ValueError(f"cannot apply prefix tuning to {type(model).__name__}: it has prefixes "
                         "already; apply prefix tuning once")
    keys, values = _real_token_keys_values(body, length)
    kv = PrefixKV(keys, values, body.layer_shapes())
    body.prefix_kv = kv
    body.register_forward_pre_hook(_prefix_pre_hook, with_kwargs=True)
    log.info("prefix of %d positions on %d attention layers", length, len(keys))
    return kv


class PromptStrategy(Strategy):
    """A soft prompt of `settings.length` input embeddings (and the head) trains."""

    name = "prompt"
    settings_class = PromptConfig

    @property
    def reserved_positions(self) -> int:
        return self.settings.length  # the prompt takes input positions

    def apply(self, model: nn.Module) -> None:
        apply_prompt(model, self.settings.length)

    def trains(self, model: nn.Module):
        ids = {id(m.weight) for m in model.modules() if isinstance(m, SoftPrompt)}
        return lambda pid, names: pid in ids


class PrefixStrategy(PromptStrategy):
    """`settings.length` prefix keys and values in every self-attention (and the head) train."""

    name = "prefix"

    @property
    def reserved_positions(self) -> int:
        return 0  # the queries, and so the input positions, do not change

    def apply(self, model: nn.Module) -> None:
        apply_prefix(model, self.settings.length)

    def trains(self, model: nn.Module):
        ids = {id(p) for m in model.modules() if isinstance(m, PrefixKV) for p in m.parameters()}
        return lambda pid, names: pid in ids
