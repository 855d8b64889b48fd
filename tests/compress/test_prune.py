"""Structured pruning: removing units that contribute nothing changes nothing; importance
picks them; the refusals happen before the model changes."""

from __future__ import annotations

import pytest
import torch

from zerolm.compress import prune_ffn, prune_heads, remove_heads
from zerolm.compress.importance import gradient_scores
from zerolm.errors import ConfigError
from zerolm.models import body_of


def run(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_removing_heads_whose_output_weights_are_zero_leaves_outputs_unchanged(family, tiny_model, ids):
    model = tiny_model(family)
    blocks = body_of(model).blocks
    with torch.no_grad():
        blocks[0].attn.o_proj.weight[:, 16:24] = 0  # head 2 of block 0 (Dh = 8) writes nothing
        blocks[1].attn.o_proj.weight[:, 0:8] = 0  # head 0 of block 1
    before = run(model, ids)
    report = prune_heads(model, per_layer=[1, 1])  # weight-norm importance finds them
    assert report["removed"] == {0: [2], 1: [0]} and report["heads"] == [3, 3]
    assert [model.config.layer(i).n_heads for i in range(2)] == [3, 3]
    assert blocks[0].attn.q_proj.weight.shape == (24, 32) and blocks[0].attn.o_proj.weight.shape == (32, 24)
    assert (run(model, ids) - before).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_removing_neurons_whose_output_weights_are_zero_leaves_outputs_unchanged(family, tiny_model, ids):
    model = tiny_model(family)
    blocks = body_of(model).blocks
    with torch.no_grad():
        blocks[0].mlp.fc_out.weight[:, [3, 30]] = 0
        blocks[1].mlp.fc_out.weight[:, 36] = 0
    before = run(model, ids)
    report = prune_ffn(model, per_layer={0: 2, 1: 1})
    assert report["removed"] == {0: [3, 30], 1: [36]} and report["d_ff"] == [35, 36]
    assert blocks[0].mlp.fc_in.weight.shape == (35, 32) and blocks[0].mlp.fc_out.weight.shape == (32, 35)
    assert (run(model, ids) - before).abs().max() <= 1e-6


def test_a_gpt_with_pruned_heads_still_decodes_with_its_kv_cache(tiny_model, ids):
    model = tiny_model("gpt")
    remove_heads(model, {0: [1, 3], 1: [0]})
    full = run(model, ids)
    cache = model.new_cache(ids.shape[0])
    with torch.no_grad():
        steps = [model(ids[:, t:t + 1], cache=cache) for t in range(ids.shape[1])]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_gradient_importance_scores_a_silent_head_zero_and_leaves_the_model_as_it_was(tiny_model, ids):
    model = tiny_model()
    with torch.no_grad():
        body_of(model).blocks[1].attn.o_proj.weight[:, 8:16] = 0  # head 1 of block 1
    before = run(model, ids)

    class Task:
        def loss(self, model, batch):
            return torch.nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"]), {}

    batches = [{"input_ids": ids, "labels": torch.tensor([0, 1, 2])}] * 2
    s = gradient_scores(model, "heads", Task(), batches)
    assert s[1][1] == 0 and (s[1][[0, 2, 3]] > 0).all() and (s[0] > 0).all()
    assert all(p.grad is None for p in model.parameters())  # only the gates were differentiated
    assert (run(model, ids) - before).abs().max() == 0  # the gate hooks are gone
    report = prune_heads(model, per_layer=[0, 1], importance="gradient", objective=Task(), batches=batches)
    assert report["removed"] == {1: [1]}
    assert (run(model, ids) - before).abs().max() <= 1e-6


def test_a_fraction_that_empties_a_block_is_refused_before_anything_changes(tiny_model, ids):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = run(model, ids)
    with pytest.raises(ConfigError, match=r"every one of the heads of block\(s\) \[0, 1\].*allow empty"):
        prune_heads(model, 1.0)
    with pytest.raises(ConfigError, match=r"every one of the heads of block\(s\) \[[01]\]"):
        prune_heads(model, 0.9)  # 7 heads of 8: one block loses all four
    with pytest.raises(ConfigError, match=r"block\(s\) \[1\]"):
        prune_heads(model, per_layer=[0, 4])
    with pytest.raises(ConfigError, match="block 1 has 4 heads; cannot remove 5"):
        prune_heads(model, per_layer=[0, 5])
    with pytest.raises(ConfigError, match="3 per-layer counts for a model of 2 blocks"):
        prune_ffn(model, per_layer=[1, 2, 3])
    with pytest.raises(ConfigError, match="exactly one of a fraction"):
        prune_ffn(model)
    assert model.config.layers == [] and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(model, ids), before)


def test_an_empty_block_is_allowed_when_asked(tiny_model, ids):
    model = tiny_model()
    report = prune_heads(model, per_layer=[0, 4], allow_empty=True)
    prune_ffn(model, per_layer=[37, 0], allow_empty=True)
    assert report["heads"] == [4, 0] and model.config.layer(0).d_ff == 0
    assert torch.isfinite(run(model, ids)).all()
    # a model with empty blocks prunes again, by either importance; the empty blocks stay empty
    class Task:
        def loss(self, model, batch):
            return model(batch["input_ids"]).logsumexp(-1).mean(), {}

    report = prune_heads(model, 0.5, importance="gradient", objective=Task(), batches=[{"input_ids": ids}])
    assert report["heads"] == [2, 0]
    assert prune_ffn(model, 0.5)["d_ff"] == [0, 18]
    assert torch.isfinite(run(model, ids)).all()


def test_scope_layer_removes_the_same_share_of_every_block(tiny_model):
    model = tiny_model()
    report = prune_ffn(model, 0.5, scope="layer")
    assert report["d_ff"] == [18, 18]  # 37 - floor(18.5 + 0.5) = 18 in each block
    report = prune_heads(model, 0.5, scope="global")
    assert sum(report["heads"]) == 4
