"""Low-rank factorisation (full rank is exact; rank and energy pick what they say) and
magnitude pruning (the share of zeros asked for, where it was asked for)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zerolm.compress import factorise, low_rank, magnitude, prune_heads
from zerolm.compress.lowrank import choose_rank
from zerolm.errors import ConfigError
from zerolm.models import body_of
from zerolm.models.layers import LowRankLinear


def run(model, ids):
    with torch.no_grad():
        return model(ids)


def test_full_rank_svd_reproduces_the_layer():
    torch.manual_seed(0)
    lin = nn.Linear(37, 32)
    x = torch.randn(5, 37)
    f = factorise(lin, rank=32)
    assert isinstance(f, LowRankLinear) and f.rank == 32
    assert f.down.weight.shape == (32, 37) and f.up.weight.shape == (32, 32)
    with torch.no_grad():
        assert (f(x) - lin(x)).abs().max() <= 1e-4
    assert factorise(lin, rank=1000).rank == 32  # capped at min(D_in, D_out)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_full_rank_low_rank_keeps_the_model_and_records_ranks(family, tiny_model, ids):
    model = tiny_model(family)
    before = run(model, ids)
    report = low_rank(model, rank=32)
    attn = body_of(model).blocks[0].attn
    assert isinstance(attn.q_proj, LowRankLinear) and "blocks.0.attn.q_proj.down.weight" in dict(
        body_of(model).named_parameters())
    assert model.config.layer(1).ranks == {n: 32 for n in report["ranks"][1]}
    assert (run(model, ids) - before).abs().max() <= 1e-4


def test_rank_and_energy_choose_what_they_say(tiny_model):
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1: 9/14, 13/14, 1
    assert choose_rank(s, None, 0.5) == 1 and choose_rank(s, None, 0.9) == 2 and choose_rank(s, None, 1.0) == 3
    assert choose_rank(s, 2, None) == 2
    model = tiny_model()
    report = low_rank(model, rank=4, targets=["mlp.fc_in", "mlp.fc_out"])
    assert report["ranks"] == [{"mlp.fc_in": 4, "mlp.fc_out": 4}] * 2
    assert report["params_after"] == 2 * 2 * 4 * (32 + 37) and report["params_before"] == 2 * 2 * 32 * 37
    assert not isinstance(body_of(model).blocks[0].attn.q_proj, LowRankLinear)
    # a factorised linear factorises again, to a lower rank, and prunes like a plain one
    low_rank(model, rank=2, targets=["mlp.fc_in"])
    assert model.config.layer(0).ranks == {"mlp.fc_in": 2, "mlp.fc_out": 4}
    low_rank(model, rank=8, targets=["attn.v_proj", "attn.o_proj"])
    prune_heads(model, per_layer=[1, 0])
    assert body_of(model).blocks[0].attn.v_proj.up.weight.shape == (24, 8)
    assert body_of(model).blocks[0].attn.o_proj.down.weight.shape == (8, 24)


def test_low_rank_refusals(tiny_model):
    model = tiny_model()
    for kw, msg in [({}, "exactly one of a rank"), ({"rank": 2, "energy": 0.5}, "exactly one of a rank"),
                    ({"energy": 1.5}, r"in \(0, 1\]"), ({"rank": 0}, "positive integer"),
                    ({"rank": 2, "targets": ["mlp.fc2"]}, "unknown linear")]:
        with pytest.raises(ConfigError, match=msg):
            low_rank(model, **kw)
    assert model.config.layers == []


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_zeroes_the_share_asked_of_the_block_linears_only(scope, tiny_model):
    model = tiny_model()
    biases = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("proj.weight")
              and not k.endswith("fc_in.weight") and not k.endswith("fc_out.weight")}
    report = magnitude(model, 0.6, scope=scope)
    assert report["overall"] == pytest.approx(0.6, abs=1e-3)
    assert "no faster" in report["note"]
    if scope == "layer":
        assert all(s == pytest.approx(0.6, abs=2e-3) for s in report["sparsity"].values())
    w = body_of(model).blocks[1].mlp.fc_in.weight
    assert report["sparsity"]["blocks.1.mlp.fc_in"] == pytest.approx((w == 0).float().mean().item())
    # everything else as it was: biases, norms, embeddings, the classifier
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in biases.items())
    # the zeros are the smallest weights
    kept = w[w != 0].abs().min()
    assert kept >= 0 and (w.abs() < kept).sum() == (w == 0).sum()


def test_magnitude_refuses_a_bad_sparsity(tiny_model):
    with pytest.raises(ConfigError, match=r"share of weights set to zero, in \[0, 1\)"):
        magnitude(tiny_model(), 1.2)
