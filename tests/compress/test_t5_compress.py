"""Compressing an encoder-decoder (T5): int8 and magnitude pruning reach every block, the
decoder's self- and cross-attention included, and the result reloads and decodes with its
cache; transforms that change per-block shapes are refused before anything changes."""

from __future__ import annotations

import pytest
import torch

import zerolm
from zerolm.cli.main import main
from zerolm.compress import (
    int8_dynamic,
    int8_weight,
    low_rank,
    magnitude,
    prune_ffn,
    prune_heads,
    save_compressed,
)
from zerolm.compress.prune import remove_heads
from zerolm.compress.quant import Int8Embedding, Int8Linear
from zerolm.errors import ConfigError
from zerolm.generate import GenerationConfig, generate_seq2seq
from zerolm.models import ModelConfig, build_model

TINY = dict(family="t5", vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, head_dim=8,
            d_ff=37, gated_ffn=True, activation="gelu_tanh", bias=False, norm_eps=1e-6, dropout=0.0,
            attn_dropout=0.0, rel_buckets=8, rel_max_distance=20, max_seq_len=64, tie_embeddings=False)
SOURCE = "A man is eating in the snow."


def t5(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **kw})).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 99, (3, 9), generator=g)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    tgt = torch.randint(3, 99, (3, 6), generator=g)
    return src.masked_fill(mask == 0, 0), mask, tgt


def logits(model, src, mask, tgt):
    with torch.no_grad():
        return model(src, attention_mask=mask, decoder_input_ids=tgt)


@pytest.mark.parametrize("transform", [
    lambda m: prune_heads(m, 0.5), lambda m: prune_ffn(m, 0.5), lambda m: low_rank(m, rank=4),
    lambda m: remove_heads(m, {0: [1]})])
def test_shape_changing_transforms_are_refused_before_anything_changes(transform):
    model = t5()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="changes per-block shapes.*t5"):
        transform(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", [int8_dynamic, int8_weight])
def test_int8_reaches_every_block_and_reloads_with_the_same_targets(method, tmp_path):
    model = t5()
    src, mask, tgt = batch()
    fp32 = logits(model, src, mask, tgt)
    report = method(model)
    # encoder: 4 attention + 3 gated FFN linears per block; decoder: also 4 cross-attention ones
    assert len(report["linears"]) == 2 * 7 + 3 * 11
    assert any(n.startswith("body.decoder.blocks.2.cross_attn.") for n in report["linears"])
    assert report["embeddings"] == ["body.tok_emb"]  # untied: the embedding is int8 too
    assert isinstance(model.body.decoder.blocks[0].cross_attn.k_proj, Int8Linear)
    assert isinstance(model.body.tok_emb, Int8Embedding) and isinstance(model.lm_head, torch.nn.Linear)
    q = logits(model, src, mask, tgt)
    assert (q - fp32).abs().max() / fp32.abs().max() < 0.05  # close to fp32
    # decoding with the cache (whose dtype must not follow the int8 embedding) equals the full forward
    cfg = GenerationConfig(max_new_tokens=6, greedy=True, stop_at_eos=False)
    out = generate_seq2seq(model, src, cfg, attention_mask=mask, eos_id=1)
    full = logits(model, src, mask, torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], 1)).argmax(-1)
    assert torch.equal(out, full)
    save_compressed(model, tmp_path / "q")
    again = zerolm.load(tmp_path / "q").model
    assert isinstance(again.body.decoder.blocks[1].cross_attn.o_proj, Int8Linear)
    assert torch.equal(logits(again, src, mask, tgt), q)


def test_magnitude_prunes_the_decoder_too():
    model = t5()
    report = magnitude(model, 0.5)
    assert len(report["per_block"]) == 2 + 3 and all(abs(s - 0.5) < 0.1 for s in report["per_block"])
    assert "decoder.blocks.0.cross_attn.q_proj" in report["sparsity"]
    assert "blocks.1.mlp.fc_gate" in report["sparsity"] and abs(report["overall"] - 0.5) < 1e-3
    w = model.body.decoder.blocks[2].cross_attn.v_proj.weight
    assert 0.3 < float((w == 0).float().mean()) < 0.7


@pytest.fixture(scope="module")
def translator(tiny_run):
    return tiny_run("seq2seq_translate.yaml", "train.max_steps=40") / "best"


def test_cli_int8_dynamic_translator_evaluates_and_a_pruning_is_refused(translator, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["compress", str(translator), "--method", "int8-dynamic", "--out", str(out)]) == 0
    pred = zerolm.load(out)
    assert pred.is_seq2seq and isinstance(pred.model.body.decoder.blocks[0].cross_attn.q_proj, Int8Linear)
    assert len(pred.generate([SOURCE])[0]) > 0
    assert main(["eval", str(out), "--input", "pkg:quickstart/translate_dev.tsv", "--json"]) == 0
    assert '"bleu"' in capsys.readouterr().out
    never = tmp_path / "never"
    assert main(["compress", str(translator), "--method", "prune-ffn", "--fraction", "0.5", "--out", str(never)]) == 2
    assert "changes per-block shapes" in capsys.readouterr().err and not never.exists()
