"""`zerolm export onnx` of an encoder-decoder LM (T5): encoder, cross-attention memory and
decoder-step graphs that match PyTorch at every checked shape and past length (T5's
relative position bias depends on the past), decoding through them that writes the
targets PyTorch writes (greedy and beam search, padded sources), an int8 copy that keeps
the next tokens, and `zerolm.load` / generate / predict / eval on the exported directory,
for a fine-tuned seq2seq model, a model without a task, T5 v1.1 (gated, untied) and v1.0
(ReLU, head tied to the embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install 'zerolm[onnx]')")
pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install 'zerolm[onnx]')")

import zerolm
from zerolm.cli.main import main
from zerolm.errors import CheckpointError
from zerolm.export import export_onnx
from zerolm.export.onnx import ExportError
from zerolm.export.runtime import OnnxSeq2SeqLM
from zerolm.generate import GenerationConfig, generate_seq2seq
from zerolm.models import ModelConfig, build_model

DEV = Path(__file__).resolve().parents[2] / "src" / "zerolm" / "resources" / "quickstart" / "translate_dev.tsv"
SOURCES = ["A man is eating in the snow.", "Two dogs.", "A woman in a red coat walks across the street with her child."]
# odd sizes catch shape bugs; 3 decoder layers against 2 encoder ones catch a mixed-up count
TINY = dict(family="t5", vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, head_dim=8,
            d_ff=37, bias=False, norm_eps=1e-6, dropout=0.0, attn_dropout=0.0, rel_buckets=8,
            rel_max_distance=20, max_seq_len=64)
VARIANTS = {"v1.1": dict(tie_embeddings=False, gated_ffn=True, activation="gelu_tanh"),
            "v1.0": dict(tie_embeddings=True, gated_ffn=False, activation="relu")}
ATOL = 1e-4


def _t5(variant: str, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **VARIANTS[variant], **kw})).eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(PyTorch Seq2SeqLM, its export with the int8 copy, the ONNX model loaded back)."""
    model = _t5(request.param)
    out = tmp_path_factory.mktemp("t5") / request.param
    export_onnx(model, out, int8=True)
    return model, out, zerolm.load(out).model


@pytest.fixture(scope="module")
def translator(tiny_run) -> Path:
    """best/ of the tiny English -> German T5 (the key the serve tests train too)."""
    return tiny_run("seq2seq_translate.yaml", "train.max_steps=40") / "best"


def _sources(vocab: int = 99):
    """Three right-padded sources (B, S) = (3, 11), and their mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _targets(T: int = 10) -> torch.Tensor:
    dec = torch.randint(3, 99, (3, T), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = 0  # the start token
    return dec


def test_the_graphs_match_pytorch_at_every_checked_shape_and_past(pair):
    model, out, onnx = pair
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["kind"] == "seq2seq_lm" and isinstance(onnx, OnnxSeq2SeqLM)
    for files in manifest["files"].values():
        assert set(files) == {"encoder", "memory", "decoder"} and all((out / f).is_file() for f in files.values())
    cases = manifest["parity"]["cases"]
    assert manifest["parity"]["max_abs_diff"] <= ATOL
    assert any(c["batch"] == c["source"] == c["length"] == 1 and c["past"] == 0 for c in cases)
    # the decoder's relative position bias depends on the past: checked at several, one past
    # the farthest bucket
    pasts = {c["past"] for c in cases}
    assert len(pasts) >= 4 and max(pasts) > model.config.rel_max_distance
    dec_inputs = {i["name"]: i["shape"] for i in manifest["graphs"]["decoder"]["inputs"]}
    assert dec_inputs["past.2.key"] == ["batch", 4, "past_sequence", 8]
    assert dec_inputs["cross.2.value"] == ["batch", 4, "source", 8] and "past.3.key" not in dec_inputs

    # generation's way: encode once, a prefill of 3 target tokens, then one at a time
    ids, mask = _sources()
    dec = _targets()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, decoder_input_ids=dec)  # (B, T, V)
    cache = onnx.new_cache(3, 16)
    enc = onnx.encode(ids, mask)
    steps = [onnx(decoder_input_ids=dec[:, :3], encoder_states=enc, attention_mask=mask, cache=cache)]
    steps += [onnx(decoder_input_ids=dec[:, t:t + 1], cache=cache) for t in range(3, 10)]
    assert cache.length == 10 and cache.self_kv.k[0].shape == (3, 4, 10, 8)
    assert (torch.cat(steps, 1) - full).abs().max().item() <= ATOL
    # and the task's loss path: one uncached call from the source ids
    assert (onnx(ids, attention_mask=mask, decoder_input_ids=dec) - full).abs().max().item() <= ATOL


def test_a_reordered_cache_decodes_as_pytorchs(pair):
    """Beam search repeats and drops rows of the decoder's cache, and drops the source's
    keys and values with a source that is done."""
    model, _, onnx = pair
    ids, mask = _sources()
    dec = _targets(5)
    rows, keep = torch.tensor([2, 0, 0]), torch.tensor([0, 2])
    got = []
    for m in (model, onnx):
        cache = m.new_cache(3, 8)
        with torch.no_grad():
            m(ids, attention_mask=mask, decoder_input_ids=dec[:, :4], cache=cache)
            cache.self_kv.reorder(rows)
            cache.reorder_memory(torch.arange(3))
            a = m(decoder_input_ids=dec[rows, 4:5], cache=cache)
            cache.reorder(keep)
            b = m(decoder_input_ids=dec[rows[keep], 4:5], cache=cache)
        got.append(torch.cat([a, b]))
    assert (got[0] - got[1]).abs().max().item() <= ATOL


def test_greedy_and_beam_targets_equal_pytorchs(pair):
    model, _, onnx = pair
    ids, mask = _sources()
    with torch.no_grad():
        free = generate_seq2seq(model, ids, GenerationConfig(max_new_tokens=12, greedy=True), attention_mask=mask)
    eos = int(free[1, 4])  # an end-of-text that ends the rows at different steps
    for cfg in (GenerationConfig(max_new_tokens=12, greedy=True),
                GenerationConfig(max_new_tokens=12, num_beams=4),
                GenerationConfig(max_new_tokens=9, num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2)):
        with torch.no_grad():
            want = generate_seq2seq(model, ids, cfg, attention_mask=mask, eos_id=eos, pad_id=0)
        got = generate_seq2seq(onnx, ids, cfg, attention_mask=mask, eos_id=eos, pad_id=0)
        assert torch.equal(got, want), cfg
        assert (want == eos).any()


def test_the_int8_copy_keeps_the_next_tokens(pair):
    model, out, _ = pair
    manifest = json.loads((out / "onnx.json").read_text())
    q = manifest["int8"]
    assert q["agreement"] >= q["min_agreement"] and q["bytes"] < q["fp32_bytes"]
    int8 = zerolm.load(out / "encoder.int8.onnx").model  # any int8 graph picks the int8 set
    assert int8.path.name == "decoder.int8.onnx"
    ids, mask = _sources()
    dec = _targets()
    with torch.no_grad():
        want = model(ids, attention_mask=mask, decoder_input_ids=dec).argmax(-1)
    assert (int8(ids, attention_mask=mask, decoder_input_ids=dec).argmax(-1) == want).float().mean() >= 0.9
    (out / "stray.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not one of the graphs"):
        zerolm.load(out / "stray.onnx")
    (out / "stray.onnx").unlink()


def test_a_past_length_the_trace_froze_fails_the_export(tmp_path, monkeypatch):
    """A Python branch on the decoder's last position (the trace sees 4) is caught only by
    the check whose past goes beyond where the branch turns (past 23): nothing is written."""
    model = _t5("v1.1")
    rel_pos = model.body.decoder.rel_pos
    plain = rel_pos.forward
    # (a scaled bias: a constant added to every score would change no probability)
    monkeypatch.setattr(rel_pos, "forward", lambda q, k: plain(q, k) * (3.0 if int(q[-1]) < 12 else 1.0))
    with pytest.raises(ExportError, match=r"differs from PyTorch .* past 23.*nothing was written"):
        export_onnx(model, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_then_load_generates_predicts_and_evaluates_as_pytorch(translator, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(translator), "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "seq2seq_lm: ONNX matches PyTorch" in printed and "past" in printed and "int8:" in printed
    assert {p.name for p in out.iterdir()} == {
        "encoder.onnx", "memory.onnx", "decoder.onnx", "encoder.int8.onnx", "memory.int8.onnx",
        "decoder.int8.onnx", "onnx.json", "model_config.json", "task.json", "tokenizer"}
    torch_pred, onnx_pred = zerolm.load(translator), zerolm.load(out)
    assert onnx_pred.is_seq2seq and onnx_pred.meta == torch_pred.meta
    assert type(onnx_pred.task) is type(torch_pred.task)
    for options in ({}, {"num_beams": 4}, {"num_beams": 3, "length_penalty": 0.6, "max_new_tokens": 10}):
        assert onnx_pred.generate(SOURCES, **options) == torch_pred.generate(SOURCES, **options), options
    assert onnx_pred.predict(SOURCES) == torch_pred.predict(SOURCES)
    a, b = torch_pred.evaluate(DEV), onnx_pred.evaluate(DEV)
    assert a["bleu"] == b["bleu"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_a_model_without_a_task_exports_and_generates_as_pytorch(translator, tmp_path):
    """A pretrained encoder-decoder (no task.json), here T5 v1.0 with its head tied."""
    from zerolm.modeldir import save_model
    from zerolm.tokenizers import Tokenizer

    tok = Tokenizer.load(translator / "tokenizer")
    save_model(_t5("v1.0", vocab_size=tok.vocab_size), tmp_path / "lm", tokenizer=tok)
    torch_pred = zerolm.load(tmp_path / "lm")
    manifest = export_onnx(torch_pred.model, tmp_path / "onnx", tokenizer=tok, meta=torch_pred.meta)
    assert manifest["kind"] == "seq2seq_lm" and not (tmp_path / "onnx" / "task.json").exists()
    onnx_pred = zerolm.load(tmp_path / "onnx")
    assert onnx_pred.task is None and onnx_pred.is_seq2seq
    for options in ({"greedy": True, "max_new_tokens": 12}, {"num_beams": 3, "max_new_tokens": 8}):
        assert onnx_pred.generate(SOURCES, **options) == torch_pred.generate(SOURCES, **options), options
