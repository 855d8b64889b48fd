"""int8-weight and int8-dynamic: int8 on disk, reloaded as int8 in a new process with the
same predictions, close to fp32, refused before anything is written where they do not apply."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors import safe_open

import zerolm
from zerolm.cli.main import main
from zerolm.compress import int8_dynamic, int8_weight, low_rank, prune_ffn, save_compressed
from zerolm.compress.quant import Int8Embedding, Int8Linear, quantize, quantize_rows
from zerolm.errors import ConfigError
from zerolm.loading import load_model

TEXTS = ["a lovely, moving film", "a dull and lifeless mess", "fine", "not good at all, sadly"]
DEV = "pkg:quickstart/reviews_dev.tsv"
METHODS = {"int8-weight": int8_weight, "int8-dynamic": int8_dynamic}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")


def linear_weight_bytes(directory) -> int:
    """Bytes of the block linears' weights in the file (int8 weights count their scales)."""
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).nbytes for k in f.keys()
                   if ".blocks." in k and k.split(".")[-2] in LINEARS and k.split(".")[-1] in ("weight",
                                                                                                "weight_scale"))


def predict_in_new_process(directory) -> dict:
    """Predictions of TEXTS by a fresh interpreter, and the types it rebuilt the linears as."""
    code = ("import json, sys, zerolm; p = zerolm.load(sys.argv[1]); "
            "types = sorted({type(m).__name__ for n, m in p.model.named_modules() if n.endswith(('_proj', 'fc_in', "
            "'fc_out', 'tok_emb'))}); "
            "print(json.dumps({'preds': p.predict(json.loads(sys.argv[2])), 'types': types, "
            "'dtype': str(p.model.body.blocks[0].attn.q_proj.weight.dtype)}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code, str(directory),
                           json.dumps(TEXTS)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_rows_round_trip_within_half_a_step():
    w = torch.randn(5, 37) * torch.tensor([1e-3, 1.0, 30.0, 0.0, 2.0])[:, None]  # one all-zero row
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (5,)
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7)
    assert torch.equal(q[3], torch.zeros(37, dtype=torch.int8))


def test_the_dynamic_int8_matmul_is_the_product_of_the_quantized_operands():
    torch.manual_seed(0)
    lin = torch.nn.Linear(37, 11)
    x = torch.randn(2, 5, 37) * 3
    q = Int8Linear.from_linear(lin, dynamic=True)
    # what the int8 kernel must compute, in float64: per-token quantized x times dequantized W
    s = x.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(x / s) * s
    expect = xq.double() @ q.dequantized(torch.float64).t() + lin.bias.double()
    assert torch.allclose(q(x).double(), expect, atol=1e-5)
    weight_only = Int8Linear.from_linear(lin, dynamic=False)
    assert torch.allclose(weight_only(x), torch.nn.functional.linear(x, weight_only.dequantized(), lin.bias),
                          atol=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_int8_linear_weights_are_at_least_3_5x_smaller_on_disk(method, tiny_model, tmp_path):
    model = tiny_model()
    fp32 = save_compressed(model, tmp_path / "fp32")
    report = METHODS[method](model)
    out = save_compressed(model, tmp_path / "int8")
    before, after = linear_weight_bytes(fp32), linear_weight_bytes(out)
    assert before / after >= 3.5, (before, after)
    assert report["bytes_before"] / report["bytes_after"] >= 3.5
    # the whole file: biases, norms, position embeddings, pooler and head stay fp32 (a large share here)
    assert (out / "model.safetensors").stat().st_size < (fp32 / "model.safetensors").stat().st_size / 2
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("body.blocks.1.mlp.fc_out.weight").dtype == torch.int8
        assert f.get_tensor("body.blocks.1.mlp.fc_out.weight_scale").dtype == torch.float32
        assert f.get_tensor("body.tok_emb.weight").dtype == torch.int8
        assert f.get_tensor("classifier.weight").dtype == torch.float32  # the task head stays fp32


@pytest.mark.parametrize("method", list(METHODS))
def test_an_int8_model_reloads_as_int8_in_a_new_process_and_predicts_the_same(method, classifier, tmp_path):
    pred = zerolm.load(classifier)
    METHODS[method](pred.model)
    before = pred.predict(TEXTS)
    out = save_compressed(pred.model, tmp_path / "q", tokenizer=pred.tokenizer, meta=pred.meta,
                          record={"method": method})
    assert json.loads((out / "compress.json").read_text())["quantization"]["method"] == method
    after = predict_in_new_process(out)
    assert after["types"] == ["Int8Embedding", "Int8Linear"] and after["dtype"] == "torch.int8"
    assert [a["label"] for a in after["preds"]] == [b["label"] for b in before]
    for a, b in zip(after["preds"], before):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    again = zerolm.load(out).model
    assert isinstance(again.body.blocks[0].mlp.fc_in, Int8Linear) and again.body.blocks[0].mlp.fc_in.dynamic == (
        method == "int8-dynamic")
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in pred.model.parameters())


@pytest.mark.parametrize("method", list(METHODS))
def test_int8_predictions_stay_close_to_fp32(method, classifier):
    pred = zerolm.load(classifier)
    fp32 = pred.evaluate(DEV)
    ref = pred.predict(TEXTS)
    METHODS[method](pred.model)
    got = pred.predict(TEXTS)
    gap = max(abs(g["probs"][k] - r["probs"][k]) for g, r in zip(got, ref) for k in r["probs"])
    assert gap < 1e-3  # measured: 1e-5 for both methods, the rounding of the printed probs
    assert [g["label"] for g in got] == [r["label"] for r in ref]
    assert pred.evaluate(DEV)["accuracy"] == pytest.approx(fp32["accuracy"], abs=0.02)


def test_hidden_states_stay_close_to_fp32_with_an_odd_sized_model(tiny_model, ids):
    model = tiny_model()
    ref = model.body(ids).last_hidden_state
    for method, fn in METHODS.items():
        m = copy.deepcopy(model)
        fn(m)
        h = m.body(ids).last_hidden_state
        # measured: max |dh| 0.011 for both (mostly the int8 token embedding), min cosine 0.99998,
        # on LayerNorm-scaled states (std 1)
        assert (h - ref).abs().max() < 0.05, method
        assert torch.nn.functional.cosine_similarity(h, ref, dim=-1).min() > 0.9999, method


def test_int8_after_pruning_and_factorising_reloads_and_predicts_the_same(classifier, tmp_path):
    pred = zerolm.load(classifier)
    prune_ffn(pred.model, per_layer=[37, 5], allow_empty=True)  # block 0 keeps no neuron: (0, D) weights
    low_rank(pred.model, rank=6, targets=["attn.q_proj"])
    report = int8_dynamic(pred.model)
    assert "body.blocks.0.attn.q_proj.down" in report["linears"]
    before = pred.predict(TEXTS)
    out = save_compressed(pred.model, tmp_path / "all", tokenizer=pred.tokenizer, meta=pred.meta)
    after = zerolm.load(out)
    assert isinstance(after.model.body.blocks[1].attn.q_proj.up, Int8Linear)
    assert after.model.body.blocks[0].mlp.fc_in.weight.shape == (0, 32)
    assert [a["probs"] for a in after.predict(TEXTS)] == [b["probs"] for b in before]


def test_a_causal_lm_keeps_its_tied_embedding_fp32_and_decodes_with_its_cache_after_reload(tiny_model, tmp_path):
    model = tiny_model("gpt")
    report = int8_dynamic(model)
    assert report["embeddings"] == [] and "tied" in report["embedding_note"]
    assert model.lm_head.weight is model.body.tok_emb.weight
    x = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(x)  # (B, T, V)
    out = save_compressed(model, tmp_path / "gpt")
    again, _ = load_model(out)  # no task.json: the pretraining loader replays the int8 modules too
    assert isinstance(again.body.blocks[1].mlp.fc_out, Int8Linear)
    assert again.lm_head.weight is again.body.tok_emb.weight
    assert torch.equal(again(x), before)
    cache = again.body.new_cache(2)
    steps = torch.cat([again(x[:, :4], cache=cache), again(x[:, 4:], cache=cache)], 1)
    # per-token activation scales: a token's output does not depend on the other tokens of the call
    assert torch.allclose(steps, before, atol=1e-5)


def test_no_deprecation_warning_reaches_the_user(tiny_model, ids):
    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        int8_dynamic(model)
        model(ids)


def test_refusals_change_nothing(tiny_model, monkeypatch):
    model = tiny_model()
    int8_weight(model)
    with pytest.raises(ConfigError, match="already int8"):
        int8_dynamic(model)
    assert not model.body.blocks[0].attn.q_proj.dynamic

    fresh = tiny_model()
    monkeypatch.setattr("zerolm.compress.quant.int8_matmul_available", lambda: False)
    with pytest.raises(ConfigError, match="no int8 matrix multiply"):
        int8_dynamic(fresh)
    assert isinstance(fresh.body.blocks[0].attn.q_proj, torch.nn.Linear)
    int8_weight(fresh)  # weight-only needs no int8 kernel

    with torch.device("meta"):  # stands in for a GPU: int8-dynamic is for the CPU
        elsewhere = tiny_model()
    with pytest.raises(ConfigError, match="runs on the CPU; this model is on meta"):
        quantize(elsewhere, "int8-dynamic")
    assert not any(isinstance(m, (Int8Linear, Int8Embedding)) for m in elsewhere.modules())


@pytest.mark.parametrize("method, expect", [
    ("int8-weight", "note: int8-weight is a size method"),
    ("int8-dynamic", "int8: 12 linears and the token embedding; the task head stays fp32"),
])
def test_cli_end_to_end(method, expect, classifier, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["compress", str(classifier), "--method", method, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert expect in printed and "weights on disk:" in printed
    record = json.loads((out / "compress.json").read_text())
    assert record["method"] == method and record["quantization"]["embeddings"] == ["body.tok_emb"]
    assert len(record["quantization"]["linears"]) == 12
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out), "--input", DEV, "--output", str(preds)]) == 0
    assert len(preds.read_text().splitlines()) > 10
    capsys.readouterr()
    assert main(["eval", str(out), "--input", DEV, "--json"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_keeps_the_embedding_fp32_when_asked(classifier, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["compress", str(classifier), "--method", "int8-weight", "--fp32-embeddings",
                 "--targets", "mlp.fc_in,mlp.fc_out", "--out", str(out)]) == 0
    assert "int8: 4 linears and not the token embedding (kept fp32 as asked)" in capsys.readouterr().out
    model = zerolm.load(out).model
    assert isinstance(model.body.tok_emb, torch.nn.Embedding) and isinstance(model.body.blocks[0].attn.q_proj,
                                                                             torch.nn.Linear)


@pytest.mark.parametrize("args, message, patch", [
    (["--method", "int8-dynamic", "--fraction", "0.5"], "--fraction does not apply to int8-dynamic", False),
    (["--method", "prune-ffn", "--fraction", "0.5", "--fp32-embeddings"], "--fp32-embeddings belongs to", False),
    (["--method", "int8-dynamic"], "no int8 matrix multiply on the CPU", True),
])
def test_cli_refusals_write_nothing(args, message, patch, classifier, tmp_path, capsys, monkeypatch):
    if patch:
        monkeypatch.setattr("zerolm.compress.quant.int8_matmul_available", lambda: False)
    out = tmp_path / "never"
    assert main(["compress", str(classifier), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_to_quantize_an_int8_model_again(classifier, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["compress", str(classifier), "--method", "int8-weight", "--out", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "again"
    assert main(["compress", str(first), "--method", "int8-dynamic", "--out", str(out)]) == 2
    assert "already int8" in capsys.readouterr().err
    assert not out.exists()
