"""Prompt and prefix tuning: parity with inserted tokens and a reference attention, padding,
causality, KV cache, generation, reload, copies, which parameters train, and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zerolm.generate import GenerationConfig, generate_ids
from zerolm.models import GPT, Body, ModelConfig, body_of, build_model
from zerolm.models.body import input_room
from zerolm.models.heads import SequenceClassifier
from zerolm.models.layers import MultiHeadAttention
from zerolm.peft import PrefixKV, SoftPrompt, apply_strategy, reserved_positions

FAMILIES = ("bert", "gpt")
KINDS = ("prompt", "prefix")
P = 4  # prompt / prefix length


def tiny(family: str) -> nn.Module:
    # odd sizes (vocab 99, d_ff 37) catch shape bugs
    cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                      max_seq_len=32, dropout=0.0, attn_dropout=0.0)
    return build_model(cfg).eval()


def hidden(body: Body, ids, mask=None, **kw) -> torch.Tensor:
    """Final states (B, T, D) through the entry every head uses."""
    return body(ids, attention_mask=mask, **kw).last_hidden_state


def classifier(family: str, kind: str | None = None, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    model = SequenceClassifier(tiny(family), num_labels=3, dropout=0.0).eval()
    if kind is not None:
        apply_strategy(model, kind, prompt_length=P)
    return model


def ids_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 9 tokens; the second has 3 right-padding positions."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


# --- what the strategies compute ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_prompt_equals_the_base_model_on_inserted_tokens(family):
    """A soft prompt set to the embeddings of real words computes what the frozen model
    computes with those words inserted (after [CLS] / first), minus their positions."""
    base = tiny(family)
    model = copy.deepcopy(base)
    apply_strategy(model, "prompt", prompt_length=P)
    words = torch.tensor([5, 17, 42, 8])
    body = body_of(model)
    assert isinstance(body.soft_prompt, SoftPrompt)
    assert type(body.tok_emb) is nn.Embedding  # the token embedding is not swapped
    with torch.no_grad():
        body.soft_prompt.weight.copy_(body.tok_emb.weight[words])
    ids, mask = ids_and_mask()
    types = torch.zeros_like(ids)
    types[:, 5:] = 1  # a sentence pair: the prompt is in segment A
    k = 1 if family == "bert" else 0

    def put(t, fill):
        return torch.cat([t[:, :k], fill.expand(2, P), t[:, k:]], dim=1)

    def strip(h):
        return torch.cat([h[:, :k], h[:, k + P:]], dim=1)

    ones = torch.ones(P, dtype=torch.long)
    with torch.no_grad():
        if family == "bert":
            want = strip(hidden(body_of(base), put(ids, words), put(mask, ones),
                                token_type_ids=put(types, 0 * ones)))
            got = hidden(body, ids, mask, token_type_ids=types)
            positions = hidden(body, ids, mask, token_type_ids=types, position_ids=torch.arange(9)[None])
            embeds = hidden(body, None, mask, token_type_ids=types, inputs_embeds=body.embed(ids))
        else:
            want = strip(hidden(body_of(base), put(ids, words), put(mask, ones)))
            got = hidden(body, ids, mask)
            positions = hidden(body, ids, mask, position_ids=torch.arange(9)[None])
            embeds = hidden(body, None, mask, inputs_embeds=body.embed(ids))
            # the causal-LM path (forward) goes through the same prompt
            torch.testing.assert_close(model(ids, attention_mask=mask), model.lm_head(got), rtol=0, atol=0)
            torch.testing.assert_close(model(ids, attention_mask=mask),
                                       strip(base(put(ids, words), attention_mask=put(mask, ones))),
                                       rtol=0, atol=1e-5)
    assert got.shape == (2, 9, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(positions, got, rtol=0, atol=0)  # the default positions, given
    torch.testing.assert_close(embeds, got, rtol=0, atol=0)  # token embeddings in place of ids
    # the base model, copied before the transform, is untouched
    with torch.no_grad():
        assert not torch.allclose(hidden(body_of(base), ids, mask), got, atol=1e-3)
    assert not hasattr(body_of(base), "soft_prompt")


def reference_attention(attn: MultiHeadAttention, prefix_k, prefix_v, x, mask, causal) -> torch.Tensor:
    """Softmax(q k^T / sqrt(Dh)) v over [prefix; own] keys, written out by hand; the
    prefix keys and values (P, D) have the heads side by side, like k_proj's output."""
    B, T, D = x.shape
    H, Dh = attn.n_heads, attn.head_dim
    k = torch.cat([prefix_k.expand(B, -1, -1), attn.k_proj(x)], 1)  # (B, P + T, D)
    v = torch.cat([prefix_v.expand(B, -1, -1), attn.v_proj(x)], 1)
    q = attn.q_proj(x).view(B, T, H, Dh).transpose(1, 2)
    k = k.view(B, P + T, H, Dh).transpose(1, 2)
    v = v.view(B, P + T, H, Dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)  # (B, H, T, P + T)
    allowed = torch.ones(B, 1, T, P + T, dtype=torch.bool)
    if mask is not None:  # (B, 1, 1, T) keys
        allowed[..., P:] &= mask
    if causal:
        allowed[..., P:] &= torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    return attn.o_proj(y)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_prefix_attention_matches_a_reference(causal, padded):
    model = tiny("gpt")
    apply_strategy(model, "prefix", prompt_length=P)
    kv = model.body.prefix_kv
    assert isinstance(kv, PrefixKV)
    attn = model.body.blocks[1].attn
    assert type(attn) is MultiHeadAttention  # the attention is not swapped
    # what the body attends with: the prefix the pre-hook hands to every forward
    seen = []
    attn.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["prefix"]), with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(0, 99, (1, 3)))
    assert len(seen) == 1
    for a, b in zip(seen[0], kv.per_layer()[1], strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 7, 32)
    key_mask = None
    if padded:
        key_mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
        key_mask[1, ..., 5:] = False
    mask = key_mask
    if padded and causal:  # the decoder passes causality inside its mask
        mask = key_mask & torch.ones(7, 7, dtype=torch.bool).tril()
    with torch.no_grad():
        got, _ = attn(x, mask=mask, causal=causal, prefix=seen[0])
        want = reference_attention(attn, kv.keys[1], kv.values[1], x, key_mask, causal)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_strategy_changes_the_output(family, kind):
    base, model = classifier(family), classifier(family, kind)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        assert not torch.allclose(hidden(base.body, ids, mask), hidden(model.body, ids, mask), atol=1e-3)


# --- invariants ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_extra_right_padding_changes_nothing_at_real_positions(family, kind):
    model = classifier(family, kind)
    ids = torch.randint(1, 99, (2, 9))
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 5)], dim=1).long()
    with torch.no_grad():
        ref_h, ref_logits = hidden(model.body, ids), model(ids)
        pad_h, pad_logits = hidden(model.body, padded, mask), model(padded, attention_mask=mask)
    assert pad_h.shape == (2, 14, 32)
    torch.testing.assert_close(pad_h[:, :9], ref_h, rtol=0, atol=1e-5)
    torch.testing.assert_close(pad_logits, ref_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_future_tokens_do_not_change_past_gpt_logits(kind):
    model = tiny("gpt")
    apply_strategy(model, kind, prompt_length=P)
    x = torch.randint(0, 99, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 99, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 20, 99)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


@pytest.mark.parametrize("given_positions", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_kv_cached_logits_equal_full_forward(kind, given_positions):
    model = tiny("gpt")
    apply_strategy(model, kind, prompt_length=P)
    x = torch.randint(0, 99, (2, 24))
    mask = torch.ones_like(x)
    mask[0, :2] = 0  # left padding in one row: the cached calls get the mask too

    def call(a, b, cache=None):
        # positions, when given, count real tokens only (as a caller sees them)
        pos = torch.arange(a, b)[None] if given_positions else None
        return model(x[:, a:b], attention_mask=mask[:, :b], position_ids=pos, cache=cache)

    with torch.no_grad():
        full = call(0, 24)
        cache = model.new_cache(2, 24 + reserved_positions(model))  # real tokens + the prompt's
        parts = [call(0, 7, cache)]  # a prompt, then one token at a time, then a chunk
        parts += [call(t, t + 1, cache) for t in range(7, 16)]
        parts.append(call(16, 24, cache))
    assert reserved_positions(model) == (P if kind == "prompt" else 0)
    assert cache.length == 24 + reserved_positions(model)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)
    if given_positions:
        with torch.no_grad():
            torch.testing.assert_close(full, model(x, attention_mask=mask), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_cached_equals_uncached(kind):
    model = tiny("gpt")
    apply_strategy(model, kind, prompt_length=P)
    prompt = torch.randint(0, 99, (1, 5))
    a = generate_ids(model, prompt, GenerationConfig(max_new_tokens=20, greedy=True, use_cache=True))
    b = generate_ids(model, prompt, GenerationConfig(max_new_tokens=20, greedy=True, use_cache=False))
    assert a.shape == (1, 20)
    assert torch.equal(a, b)


def test_generation_past_the_window_left_by_the_soft_prompt():
    model = tiny("gpt")  # 32 positions, P of them taken by the prompt
    apply_strategy(model, "prompt", prompt_length=P)
    assert input_room(model) == 32 - P
    prompt = torch.randint(0, 99, (1, 5))
    # past the window: a sliding window of the last 32 - P tokens (the prompt fills the rest)
    a = generate_ids(model, prompt, GenerationConfig(max_new_tokens=40, greedy=True))
    assert a.shape == (1, 40)
    # the tokens that fit in the window: the cached ones equal a full forward at every step
    within = 32 - P - 5
    b = generate_ids(model, prompt, GenerationConfig(max_new_tokens=within, greedy=True, use_cache=False))
    assert torch.equal(a[:, :within], b)
    c = generate_ids(model, prompt, GenerationConfig(max_new_tokens=40, greedy=True, use_cache=False))
    assert torch.equal(a, c)


# --- state dict, reload, copies -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keys_are_the_base_keys_plus_the_new_parameters(family, kind):
    base_sd = classifier(family).state_dict()
    model = classifier(family, kind)
    sd = model.state_dict()
    assert set(base_sd) <= set(sd)
    added = set(sd) - set(base_sd)
    if kind == "prompt":
        assert added == {"body.soft_prompt.weight"}
    else:
        assert added == {f"body.prefix_kv.{w}.{i}" for i in range(2) for w in ("keys", "values")}
    for k, v in base_sd.items():  # the base parameters are the very same tensors
        assert torch.equal(sd[k], v)


@pytest.mark.parametrize("kind", KINDS)
def test_tied_gpt_head_stays_tied(kind):
    model = tiny("gpt")
    apply_strategy(model, kind, prompt_length=P)
    assert type(model.body.tok_emb) is nn.Embedding
    assert model.lm_head.weight is model.body.tok_emb.weight
    assert not model.body.tok_emb.weight.requires_grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_model_gives_identical_outputs(family, kind):
    trained = classifier(family, kind, seed=0)
    with torch.no_grad():  # stands in for training
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    saved = {k: v.clone() for k, v in trained.state_dict().items()}
    reloaded = classifier(family, kind, seed=1)  # as load_finetuned: build, re-apply, load
    ids, mask = ids_and_mask()
    with torch.no_grad():
        want = trained(ids, attention_mask=mask)
        assert not torch.allclose(reloaded(ids, attention_mask=mask), want, atol=1e-4)
        reloaded.load_state_dict(saved)  # strict: exactly the same keys
        torch.testing.assert_close(reloaded(ids, attention_mask=mask), want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_deep_copy_is_independent(family, kind):
    model = classifier(family, kind)
    twin = copy.deepcopy(model)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        want = hidden(model.body, ids, mask)
        torch.testing.assert_close(hidden(twin.body, ids, mask), want, rtol=0, atol=0)
        for n, p in twin.named_parameters():
            if ".soft_prompt." in n or ".prefix_kv." in n:
                p.add_(torch.randn_like(p))  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(hidden(twin.body, ids, mask), want, atol=1e-3)
        torch.testing.assert_close(hidden(model.body, ids, mask), want, rtol=0, atol=0)


# --- what trains --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_step_moves_only_the_new_parameters_and_the_head(family, kind):
    model = classifier(family, kind)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new = {"body.soft_prompt.weight"} if kind == "prompt" else {
        f"body.prefix_kv.{w}.{i}" for i in range(2) for w in ("keys", "values")}
    assert trainable == new | {"classifier.weight", "classifier.bias"}
    n_new = P * 32 * (1 if kind == "prompt" else 2 * 2)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_new + 3 * 32 + 3

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids, mask = ids_and_mask()
    F.cross_entropy(model(ids, attention_mask=mask), torch.tensor([0, 2])).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == trainable


# --- errors -------------------------------------------------------------------------------


def test_models_without_the_stable_names_are_refused():
    with pytest.raises(ValueError, match="prompt tuning needs a Transformer body"):
        apply_strategy(nn.Sequential(nn.Linear(4, 4)), "prompt", prompt_length=P)
    with pytest.raises(ValueError, match="prefix tuning needs a Transformer body"):
        apply_strategy(nn.Sequential(nn.Linear(4, 4)), "prefix", prompt_length=P)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_lengths_and_repeats_are_refused(kind):
    with pytest.raises(ValueError, match="prompt_length >= 1"):
        apply_strategy(tiny("gpt"), kind, prompt_length=0)
    model = tiny("gpt")
    apply_strategy(model, kind, prompt_length=P)
    with pytest.raises(ValueError, match="once"):
        apply_strategy(model, kind, prompt_length=P)


def test_prompt_positions_count_against_max_seq_len():
    model = tiny("gpt")
    apply_strategy(model, "prompt", prompt_length=P)
    assert isinstance(model.body, GPT)
    model(torch.randint(0, 99, (1, 32 - P)))  # fits
    with pytest.raises(ValueError, match="soft-prompt positions exceed model.max_seq_len 32"):
        model(torch.randint(0, 99, (1, 32 - P + 1)))
    with pytest.raises(ValueError, match="leaves no room"):
        apply_strategy(tiny("bert"), "prompt", prompt_length=31)
