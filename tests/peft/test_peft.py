"""PEFT transforms: exact identity at init, merge parity, and which parameters train."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zerolm.errors import ConfigError
from zerolm.models import GPT, Bert, BertForPreTraining, ModelConfig, build_model
from zerolm.peft import (
    STRATEGIES,
    BottleneckAdapter,
    LoRALinear,
    apply_strategy,
    find_modules,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    name_matches,
    trainable_summary,
)

FAMILIES = ("bert", "gpt")


def tiny(family: str, **kw) -> nn.Module:
    # odd sizes (vocab 99, d_ff 37) catch shape bugs
    cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                      max_seq_len=32, dropout=0.0, attn_dropout=0.0, **kw)
    return build_model(cfg)


def batch(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, model.config.vocab_size, (3, 11), generator=g)  # (B, T)


def outputs(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every output of the model, so a loss on them reaches every parameter."""
    if isinstance(model, BertForPreTraining):
        out = model(ids)
        return [out.mlm_logits] + ([out.sentence_logits] if out.sentence_logits is not None else [])
    return [model(ids)]


def perturb_zero_inits(model: nn.Module) -> None:
    """Randomise LoRA B and adapter up-projections, which start at zero (and would keep
    A and the down-projections from getting any gradient on the first step)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0.0, 0.1)
            elif isinstance(m, BottleneckAdapter):
                m.up.weight.normal_(0.0, 0.1)
                m.up.bias.normal_(0.0, 0.1)


# --- LoRA -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_with_zero_b_equals_base_model(family):
    base = tiny(family).eval()
    ids = batch(base)
    want = outputs(base, ids)
    model = copy.deepcopy(base)
    apply_strategy(model, "lora", lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "fc_in"))
    assert len(find_modules(model, ("q_proj",), LoRALinear)) == 2
    for w, g in zip(want, outputs(model, ids), strict=True):
        assert torch.equal(w, g)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_merged_unmerged_and_exported_agree(family):
    model = tiny(family).eval()
    ids = batch(model)
    base_keys = set(model.state_dict())
    base_out = outputs(model, ids)[0]
    apply_strategy(model, "lora", lora_rank=4)
    perturb_zero_inits(model)
    unmerged = outputs(model, ids)[0]
    assert not torch.allclose(unmerged, base_out, atol=1e-3)  # the update is not a no-op
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.merge()
            m.merge()  # idempotent: must not add the update twice
    merged = outputs(model, ids)[0]
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    torch.testing.assert_close(outputs(model, ids)[0], unmerged, rtol=0, atol=1e-5)

    plain = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert set(plain.state_dict()) == base_keys
    torch.testing.assert_close(outputs(plain, ids)[0], unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_keeps_base_state_dict_keys(family):
    model = tiny(family)
    base_sd = model.state_dict()
    apply_strategy(model, "lora")
    sd = model.state_dict()
    assert set(base_sd) <= set(sd)
    added = set(sd) - set(base_sd)
    assert added and all(k.endswith((".lora_a", ".lora_b")) for k in added)
    assert all(".attn.q_proj." in k or ".attn.v_proj." in k for k in added)
    for k, v in base_sd.items():  # the wrapped layers own the very same tensors
        assert torch.equal(sd[k], v)
    # a base checkpoint still loads into the wrapped model (LoRA tensors left alone)
    missing, unexpected = model.load_state_dict(base_sd, strict=False)
    assert set(missing) == added and not unexpected


def test_lora_state_dict_round_trip():
    model = tiny("gpt")
    apply_strategy(model, "lora", lora_rank=2)
    perturb_zero_inits(model)
    saved = {k: v.clone() for k, v in lora_state_dict(model).items()}
    assert saved and all(k.endswith((".lora_a", ".lora_b")) for k in saved)

    other = tiny("gpt")
    apply_strategy(other, "lora", lora_rank=2)
    assert not all(torch.equal(saved[k], v) for k, v in lora_state_dict(other).items())
    load_lora_state_dict(other, saved)
    for k, v in lora_state_dict(other).items():
        assert torch.equal(v, saved[k])

    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in saved.items() if "blocks.0" not in k})
    wrong_rank = tiny("gpt")
    apply_strategy(wrong_rank, "lora", lora_rank=3)
    with pytest.raises(ValueError, match="different rank"):
        load_lora_state_dict(wrong_rank, saved)


def test_lora_percent_is_small_and_reported():
    model = tiny("gpt")
    summary = apply_strategy(model, "lora", lora_rank=2)
    assert summary["strategy"] == "lora"
    lora_params = 2 * 2 * (2 * 32 + 2 * 32)  # layers * (q, v) * (A + B) per rank-2 pair
    # tied LM head = token embedding: not trained, so only LoRA tensors count
    assert summary["trainable"] == lora_params
    assert 0 < summary["percent"] < 100
    assert summary == {"strategy": "lora", **trainable_summary(model)}


def test_lora_refuses_tied_weights_and_unknown_targets():
    with pytest.raises(ValueError, match="shared with"):
        apply_strategy(tiny("gpt"), "lora", lora_targets=("lm_head",))
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        apply_strategy(tiny("gpt"), "lora", lora_targets=("qkv",))


def test_lora_dropout_only_acts_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 5), rank=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 8)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


# --- adapters ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_starts_as_identity_and_keeps_keys(family):
    base = tiny(family).eval()
    ids = batch(base)
    want = outputs(base, ids)
    model = copy.deepcopy(base)
    apply_strategy(model, "adapter", adapter_size=5)
    # two per block: after attention and after the feed-forward network
    assert sum(isinstance(m, BottleneckAdapter) for m in model.modules()) == 2 * 2
    for w, g in zip(want, outputs(model, ids), strict=True):
        assert torch.equal(w, g)
    added = set(model.state_dict()) - set(base.state_dict())
    assert set(base.state_dict()) <= set(model.state_dict())
    assert all(".attn.o_proj.adapter." in k or ".mlp.fc_out.adapter." in k for k in added)


# --- which parameters train -------------------------------------------------------------


def one_step_changes(model: nn.Module) -> set[str]:
    """Names of the parameters that one AdamW step on a loss over all outputs moves."""
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=1e-2, weight_decay=0.0)
    loss = sum(o.float().pow(2).sum() for o in outputs(model, batch(model)))
    loss.backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def bert_with_all_heads() -> nn.Module:
    return tiny("bert", sentence_head=True, tie_embeddings=False)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("make", [bert_with_all_heads, lambda: tiny("gpt"),
                                  lambda: tiny("gpt", tie_embeddings=False)],
                         ids=["bert", "gpt_tied", "gpt_untied"])
def test_one_step_moves_exactly_the_trainable_parameters(make, strategy):
    model = make()
    if strategy == "head_only" and model.config.tie_embeddings and model.config.family == "gpt":
        with pytest.raises(ConfigError, match="no parameter to train"):
            apply_strategy(model, strategy)
        return
    summary = apply_strategy(model, strategy, freeze_layers=1, lora_rank=2, adapter_size=3,
                             prompt_length=4)
    perturb_zero_inits(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable
    assert one_step_changes(model) == trainable

    names = {n for n, _ in model.named_parameters()}
    heads = {n for n in names if n.startswith(("lm_head.", "sentence_head."))}
    if strategy == "full":
        assert trainable == names and summary["percent"] == 100.0
    elif strategy == "freeze":
        frozen = names - trainable
        assert frozen and all(".blocks.0." in f".{n}" or "_emb." in n or "emb_norm." in n
                              for n in frozen)
        assert any(".blocks.1." in f".{n}" for n in trainable)
        assert not any(".blocks.0." in f".{n}" or "tok_emb." in n for n in trainable)
    elif strategy == "head_only":
        assert trainable == heads
    elif strategy == "bitfit":
        assert trainable == heads | {n for n in names if n.endswith(".bias")}
    elif strategy == "lora":
        lora = {n for n in names if n.endswith((".lora_a", ".lora_b"))}
        assert lora and trainable == heads | lora
    elif strategy == "adapter":
        norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                 for p, _ in mod.named_parameters()}
        adapters = {n for n in names if ".adapter." in n}
        assert adapters and trainable == heads | norms | adapters
    elif strategy == "prompt":
        prompt = {n for n in names if n.endswith(".soft_prompt.weight")}
        assert len(prompt) == 1 and trainable == heads | prompt
    elif strategy == "prefix":
        # keys and values of each of the 2 blocks
        prefixes = {n for n in names if ".prefix_kv.keys." in n or ".prefix_kv.values." in n}
        assert len(prefixes) == 2 * 2 and trainable == heads | prefixes
    if strategy != "full":
        assert summary["percent"] < 100


def test_bare_encoder_with_classifier_head_only_is_a_linear_probe():
    """A downstream model built around the encoder: only its `classifier` trains."""

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = Bert(tiny("bert").config)
            self.classifier = nn.Linear(32, 3)

        def forward(self, ids):
            return self.classifier(self.bert(ids).last_hidden_state[:, 0])

    model = Classifier()
    assert model(batch(model.bert)).shape == (3, 3)
    apply_strategy(model, "head_only")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "classifier.weight", "classifier.bias"}
    assert isinstance(model.bert, Bert)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="did you mean 'bitfit'"):
        apply_strategy(tiny("gpt"), "bitfitt")
    with pytest.raises(ValueError, match="exceeds the model's 2 blocks"):
        apply_strategy(tiny("gpt"), "freeze", freeze_layers=3)


def test_name_matching_uses_trailing_components():
    assert name_matches("bert.blocks.3.attn.q_proj", ("q_proj",))
    assert name_matches("blocks.0.attn.o_proj", ("attn.o_proj",))
    assert not name_matches("blocks.0.attn.q_proj_extra", ("q_proj",))
    assert not name_matches("blocks.0.xattn.o_proj", ("attn.o_proj",))
    assert find_modules(GPT(tiny("gpt").config), ("v_proj",)) == [
        "blocks.0.attn.v_proj", "blocks.1.attn.v_proj"]
