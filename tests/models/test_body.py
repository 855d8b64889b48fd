"""The body interface every family answers: attention probabilities, every layer's hidden
states, inputs_embeds, prefix keys / values, per-layer shapes that save and reload."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from zerolm.modeldir import load_zerolm_model, save_model
from zerolm.models import Body, LayerShape, ModelConfig, body_of, build_model
from zerolm.models.layers import split_heads

TINY = dict(vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=48,
            dropout=0.0, attn_dropout=0.0)
# per-layer heads [4, 2, 3, 1]; head sizes 8, 8, 5, 8; FFN widths 37, 20, 8, 0 (a block
# whose feed-forward was pruned away); two factorised linears in the third block
SHAPES = [LayerShape(n_heads=4, d_ff=37), LayerShape(n_heads=2, d_ff=20),
          LayerShape(n_heads=3, head_dim=5, d_ff=8, ranks={"attn.q_proj": 3, "mlp.fc_in": 4}),
          LayerShape(n_heads=1, d_ff=0)]


def tiny(family: str, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(family=family, **{**TINY, **kw})).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, mask


def reference_probs(block, x, mask_bool):
    """softmax(Q K^T / sqrt(Dh) + mask), computed by hand from the block's projections."""
    attn = block.attn
    q = split_heads(attn.q_proj(x), attn.n_heads)
    k = split_heads(attn.k_proj(x), attn.n_heads)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~mask_bool, float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_attention_probabilities_equal_softmax_qk_by_hand(family):
    model = tiny(family)
    body = body_of(model)
    ids, mask = batch()
    with torch.no_grad():
        out = body(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        T = ids.shape[1]
        keys = mask[:, None, None, :].bool()  # (B, 1, 1, T)
        if body.causal:
            keys = keys & torch.ones(T, T, dtype=torch.bool).tril()
            keys = keys | torch.eye(T, dtype=torch.bool)  # a padded query sees itself
        for i, block in enumerate(body.blocks):
            x = out.hidden_states[i]
            if family == "gpt":
                x = block.attn_norm(x)  # pre-LN: attention reads the normalised stream
            want = reference_probs(block, x, keys)
            assert out.attentions[i].shape == (3, 4, T, T)
            real = mask.bool()[:, None, :, None].expand_as(want)
            assert (out.attentions[i] - want)[real].abs().max().item() <= 1e-6
            sums = out.attentions[i].sum(-1)
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_explicit_attention_path_gives_the_fused_path_outputs(family):
    body = body_of(tiny(family))
    ids, mask = batch()
    with torch.no_grad():
        fused = body(ids, attention_mask=mask)
        explicit = body(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert fused.attentions is None and fused.hidden_states is None
    real = mask.bool()
    assert (fused.last_hidden_state - explicit.last_hidden_state)[real].abs().max() <= 1e-5
    assert len(explicit.hidden_states) == body.config.n_layers + 1
    torch.testing.assert_close(explicit.hidden_states[-1], explicit.last_hidden_state)


def test_gpt2_hidden_states_and_attentions_equal_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from zerolm.convert.hf import load_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2", attn_implementation="eager").eval()
    ours, _ = load_hf(tmp_path / "gpt2")
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
        out = ours.body(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert (a - b).abs().max() <= 1e-5
    for a, b in zip(out.attentions, ref.attentions):
        assert (a - b).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_inputs_embeds_equal_input_ids(family):
    body = body_of(tiny(family))
    ids, mask = batch()
    with torch.no_grad():
        a = body(ids, attention_mask=mask).last_hidden_state
        b = body(inputs_embeds=body.embed(ids), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one"):
        body(ids, inputs_embeds=body.embed(ids))


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_prefix_keys_values_are_seen_by_every_query(family):
    body = body_of(tiny(family))
    ids, mask = batch()
    P = 3
    prefix = [(torch.randn(1, h, P, dh), torch.randn(1, h, P, dh)) for h, dh in body.layer_shapes()]
    with torch.no_grad():
        plain = body(ids, attention_mask=mask).last_hidden_state
        pre = body(ids, attention_mask=mask, prefix=prefix, output_attentions=True)
    assert not torch.allclose(plain, pre.last_hidden_state, atol=1e-3)
    a = pre.attentions[0]  # (B, H, T, P + T)
    assert a.shape[-1] == P + ids.shape[1]
    assert bool((a[..., :P] > 0).all())  # no query is masked from the prefix


def per_layer_config(family: str) -> ModelConfig:
    return ModelConfig(family=family, **{**TINY, "n_layers": 4, "layers": SHAPES})


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_per_layer_shapes_build_what_the_config_says(family):
    body = body_of(build_model(per_layer_config(family)))
    assert [b.attn.n_heads for b in body.blocks] == [4, 2, 3, 1]
    assert body.blocks[1].attn.q_proj.weight.shape == (16, 32)
    assert body.blocks[2].attn.q_proj.down.weight.shape == (3, 32)  # factorised: rank 3
    assert body.blocks[2].attn.q_proj.up.weight.shape == (15, 3)
    assert body.blocks[2].mlp.fc_in.down.weight.shape == (4, 32)
    assert body.blocks[3].mlp.fc_in.weight.shape == (0, 32)
    ids, mask = batch()
    out = body(ids, attention_mask=mask, output_attentions=True)
    assert [a.shape[1] for a in out.attentions] == [4, 2, 3, 1]


RELOAD = """
import json, sys, torch
from zerolm.modeldir import load_zerolm_model
model, _ = load_zerolm_model(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    if model.config.family == "gpt":
        full = model(ids)
        cache = model.new_cache(ids.shape[0])
        parts = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, ids.shape[1])]
        cached = torch.cat(parts, 1)
        print(json.dumps({"full": full.tolist(), "cached": cached.tolist()}))
    else:
        print(json.dumps({"full": model(ids).mlm_logits.tolist()}))
"""


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_per_layer_model_trains_saves_and_reloads_in_a_new_process(family, tmp_path):
    torch.manual_seed(0)
    cfg = per_layer_config(family)
    model = build_model(cfg).train()
    ids = torch.randint(5, 99, (2, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if family == "gpt":
        loss = model(ids[:, :-1], labels=ids[:, 1:])
    else:
        loss = F.cross_entropy(model(ids).mlm_logits.flatten(0, 1), ids.flatten())
    loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("blocks.2.attn.q_proj.down" in k for k in changed)
    model.eval()
    save_model(model, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "model_config.json").read_text())
    assert [s["n_heads"] for s in saved["layers"]] == [4, 2, 3, 1]
    with torch.no_grad():
        want = model(ids) if family == "gpt" else model(ids).mlm_logits
    res = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "m"), json.dumps(ids.tolist())],
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout)
    assert torch.equal(torch.tensor(got["full"]), want)
    if family == "gpt":
        assert (torch.tensor(got["cached"]) - want).abs().max() <= 1e-5
    again, _ = load_zerolm_model(tmp_path / "m")
    assert again.config == model.config


def test_per_layer_model_cannot_be_exported_to_hf_and_says_why(tmp_path):
    from zerolm.convert.hf import export_hf
    from zerolm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="per-layer shapes"):
        export_hf(build_model(per_layer_config("bert")), tmp_path / "hf")


def test_layer_shapes_are_validated():
    with pytest.raises(ValueError, match="one per layer"):
        ModelConfig(family="bert", **{**TINY, "layers": SHAPES})  # 4 shapes, 2 layers
    with pytest.raises(ValueError, match="factorisable"):
        LayerShape(ranks={"attn.qproj": 4})
    with pytest.raises(ValueError, match="known: bert, gpt, t5"):
        ModelConfig(family="bart")
    with pytest.raises(ValueError, match="the t5 family has no biases"):
        ModelConfig(family="t5")  # model.bias defaults to true
    with pytest.raises(ValueError, match="rel_max_distance > rel_buckets // 2"):
        ModelConfig(family="t5", bias=False, rel_buckets=32, rel_max_distance=8)
    assert ModelConfig.from_dict(per_layer_config("gpt").to_dict()) == per_layer_config("gpt")


def test_heads_read_only_the_body_interface():
    """A new family is a Body subclass: heads work on it without knowing its class."""
    from zerolm.models.heads import SequenceClassifier, TokenClassifier

    class Mean(Body):  # the smallest body: embeddings, no blocks
        def __init__(self, cfg):
            super().__init__()
            self.config = cfg
            self.tok_emb = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.blocks = torch.nn.ModuleList()

        def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, **kw):
            from zerolm.models import BodyOutput

            return BodyOutput(self._inputs(input_ids, inputs_embeds))

        def pool(self, hidden, attention_mask=None):
            return hidden.mean(1)

    body = Mean(ModelConfig(family="gpt", **TINY))
    ids, mask = batch()
    assert SequenceClassifier(body, 3)(ids, attention_mask=mask).shape == (3, 3)
    assert TokenClassifier(body, 5)(ids, attention_mask=mask).shape == (3, 11, 5)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_prompt_and_prefix_tuning_work_on_a_model_with_a_pruned_away_attention(kind):
    from zerolm.peft import apply_strategy

    cfg = ModelConfig(family="gpt", **{**TINY, "layers": [LayerShape(n_heads=0), LayerShape(n_heads=2)]})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    apply_strategy(model, kind, prompt_length=3)
    ids, mask = batch()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3, 11 + (3 if kind == "prompt" else 0))
        parts = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(4, 11)]
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5
