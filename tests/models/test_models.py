"""Behaviour of the from-scratch models: pinned names, masking, padding, KV cache."""

import pytest
import torch
import torch.nn.functional as F

from zerolm.models import Bert, BertForPreTraining, CausalLM, ModelConfig, build_model

# HF modeling_bert's odd test sizes catch shape bugs
TINY = dict(vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=48,
            dropout=0.0, attn_dropout=0.0)


def gpt(**kw) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(family="gpt", **{**TINY, **kw})).eval()


def bert(**kw) -> BertForPreTraining:
    torch.manual_seed(0)
    return BertForPreTraining(ModelConfig(family="bert", **{**TINY, **kw})).eval()


def _block_keys(prefix: str, i: int, bias: bool = True) -> set[str]:
    names = [f"{prefix}blocks.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    names += [f"{prefix}blocks.{i}.mlp.fc_in.weight", f"{prefix}blocks.{i}.mlp.fc_out.weight",
              f"{prefix}blocks.{i}.attn_norm.weight", f"{prefix}blocks.{i}.mlp_norm.weight"]
    if bias:
        names += [n.replace(".weight", ".bias") for n in names]
    return set(names)


def test_gpt_state_dict_keys_are_pinned():
    keys = set(gpt().state_dict())
    expected = {"body.tok_emb.weight", "body.pos_emb.weight", "body.final_norm.weight",
                "body.final_norm.bias", "lm_head.weight"}
    for i in range(2):
        expected |= _block_keys("body.", i)
    assert keys == expected


def test_bert_state_dict_keys_are_pinned():
    keys = set(bert(sentence_head=True).state_dict())
    expected = {"body.tok_emb.weight", "body.pos_emb.weight", "body.type_emb.weight",
                "body.emb_norm.weight", "body.emb_norm.bias", "body.pooler.weight", "body.pooler.bias",
                "mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.norm.weight",
                "mlm_head.norm.bias", "lm_head.weight", "lm_head.bias",
                "sentence_head.weight", "sentence_head.bias"}
    for i in range(2):
        expected |= _block_keys("body.", i)
    assert keys == expected


def test_tied_lm_head_shares_the_embedding():
    m = gpt()
    assert m.lm_head.weight is m.body.tok_emb.weight
    b = bert()
    assert b.lm_head.weight is b.body.tok_emb.weight


def test_future_tokens_do_not_change_past_gpt_logits():
    m = gpt()
    x = torch.randint(0, 99, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 99, (2, 8))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


def test_bert_padding_leaves_real_token_outputs_unchanged():
    m = bert().body
    x = torch.randint(5, 99, (2, 11))
    with torch.no_grad():
        ref = m(x, attention_mask=torch.ones_like(x)).last_hidden_state
        padded = torch.cat([x, torch.zeros(2, 6, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(2, 11), torch.zeros(2, 6)], dim=1).long()
        out = m(padded, attention_mask=mask).last_hidden_state
    assert torch.allclose(out[:, :11], ref, atol=1e-5)


def test_bert_is_bidirectional():
    m = bert().body
    x = torch.randint(5, 99, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 99
    with torch.no_grad():
        a, b = m(x).last_hidden_state, m(y).last_hidden_state
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_kv_cached_logits_equal_full_forward(position):
    m = gpt(position=position)
    x = torch.randint(0, 99, (2, 30))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(2)
        parts = [m(x[:, :7], cache=cache)]  # a prompt, then one token at a time, then a chunk
        for t in range(7, 20):
            parts.append(m(x[:, t:t + 1], cache=cache))
        parts.append(m(x[:, 20:], cache=cache))
    cached = torch.cat(parts, dim=1)
    assert (cached - full).abs().max().item() <= 1e-5


def test_greedy_generation_cached_equals_uncached():
    from zerolm.generate import GenerationConfig, generate_ids

    m = gpt()
    prompt = torch.randint(0, 99, (1, 5))
    a = generate_ids(m, prompt, GenerationConfig(max_new_tokens=30, greedy=True, use_cache=True))
    b = generate_ids(m, prompt, GenerationConfig(max_new_tokens=30, greedy=True, use_cache=False))
    assert a.shape == (1, 30)
    assert torch.equal(a, b)


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k():
    from zerolm.generate import GenerationConfig, _filter_logits, generate_ids

    m = gpt()
    prompt = torch.randint(0, 99, (1, 4))
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(generate_ids(m, prompt, cfg), generate_ids(m, prompt, cfg))
    logits = torch.randn(1, 99)
    kept = torch.isfinite(_filter_logits(logits, GenerationConfig(top_k=5), None))
    assert kept.sum() == 5
    probs = torch.softmax(logits, -1)
    kept_p = torch.isfinite(_filter_logits(logits, GenerationConfig(top_p=0.5), None))
    assert probs[kept_p].sum() >= 0.5 and probs[kept_p].sum() - probs[kept_p].min() < 0.5


def test_gpt_padding_mask_matches_unpadded():
    m = gpt()
    x = torch.randint(0, 99, (1, 9))
    with torch.no_grad():
        ref = m(x)
        padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
        mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], 1).long()
        out = m(padded, attention_mask=mask)
    assert torch.allclose(out[:, :9], ref, atol=1e-5)


def test_mlm_logits_at_selected_positions_equal_full_logits():
    m = bert()
    x = torch.randint(5, 99, (2, 9))
    sel = torch.zeros(2, 9, dtype=torch.bool)
    sel[0, 3] = sel[1, 5] = True
    with torch.no_grad():
        full = m(x).mlm_logits
        part = m(x, mlm_positions=sel).mlm_logits
    assert torch.allclose(part, full[sel], atol=1e-6)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_a_tiny_model_overfits_one_batch(family):
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, **TINY)
    m = build_model(cfg).train()
    x = torch.randint(5, 99, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        if family == "gpt":
            loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        else:
            loss = F.cross_entropy(m(x).mlm_logits.flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="family"):
        Bert(ModelConfig(family="gpt", **TINY))
