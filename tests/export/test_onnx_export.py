"""`zerolm export onnx`: graphs that match PyTorch at every shape (batch 1 and length 1
among them), a KV cache that equals the full forward, int8 copies that keep the labels,
all-or-nothing directories, and `zerolm.load` / predict / eval on the exported directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install 'zerolm[onnx]')")
pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install 'zerolm[onnx]')")

import zerolm
from zerolm.cli.main import main
from zerolm.export import export_onnx, is_onnx_dir
from zerolm.export.onnx import ExportError
from zerolm.export.runtime import ViterbiCRF
from zerolm.models.crf import CRF, bio_constraints

QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "zerolm" / "resources" / "quickstart"
REVIEWS_DEV = QUICKSTART / "reviews_dev.tsv"
NER_DEV = QUICKSTART / "ner_dev.txt"
TEXTS = ["The story is simple, but the telling is wonderful.", "dull", "a",
         "Broke after two days and support never answered my emails about it."]


def _feed(vocab: int, B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(1, B):  # right padding of random length
        mask[b, int(torch.randint(1, T + 1, (1,), generator=g)):] = 0
    return ids * mask, mask


SHAPES = [(1, 1), (1, 9), (2, 1), (4, 17), (7, 40)]


@pytest.mark.parametrize("which", ["classifier", "tagger"])
def test_task_graphs_match_pytorch_at_every_shape(which, request):
    src, out = request.getfixturevalue(which), request.getfixturevalue(f"{which}_onnx")
    manifest = json.loads((out / "onnx.json").read_text())
    checked = {(c["batch"], c["length"]) for c in manifest["parity"]["cases"]}
    assert len(checked) >= 3 and (1, 1) in checked and any(b == 1 and t > 1 for b, t in checked)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    # the axes are named, not frozen to the traced (2, 8)
    assert [i["shape"] for i in manifest["inputs"]][0] == ["batch", "sequence"]
    ref, onnx = zerolm.load(src).model, zerolm.load(out).model
    for B, T in SHAPES:
        T = min(T, ref.config.max_seq_len)
        ids, mask = _feed(ref.config.vocab_size, B, T, seed=B * 100 + T)
        with torch.no_grad():
            want = ref(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        got = onnx(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-4, (B, T)


def test_cached_decoding_through_onnx_equals_the_full_pytorch_forward(char_gpt, gpt_onnx):
    manifest = json.loads((gpt_onnx / "onnx.json").read_text())
    assert manifest["kind"] == "causal_lm" and manifest["parity"]["max_abs_diff"] <= 1e-4
    assert any(c["past"] > 0 and c["length"] == 1 for c in manifest["parity"]["cases"])
    names = [i["name"] for i in manifest["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "past.1.value" in names
    assert "present.0.key" in [o["name"] for o in manifest["outputs"]]
    ref, onnx = zerolm.load(char_gpt).model, zerolm.load(gpt_onnx).model
    ids, _ = _feed(ref.config.vocab_size, 3, 12, seed=3)
    with torch.no_grad():
        full = ref(ids)  # (B, T, V)
    cache = onnx.new_cache(3)
    steps = [onnx(ids[:, :5], cache=cache)] + [onnx(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert cache.length == 12 and cache.k[0].shape[2] == 12
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-4
    # rows leaving the batch take their keys and values with them
    cache.reorder(torch.tensor([2, 0]))
    assert cache.k[1].shape[0] == 2


def test_generation_on_onnx_equals_pytorch_with_and_without_the_cache(char_gpt, gpt_onnx):
    torch_lm, onnx_lm = zerolm.load(char_gpt), zerolm.load(gpt_onnx)
    prompts = ["the ", "a", "Once upon a time"]
    want = torch_lm.generate(prompts, greedy=True, max_new_tokens=12)
    assert onnx_lm.generate(prompts, greedy=True, max_new_tokens=12) == want
    assert onnx_lm.generate(prompts, greedy=True, max_new_tokens=12, use_cache=False) == want
    # past the context window generation slides on, as with PyTorch
    assert onnx_lm.generate(["x"], greedy=True, max_new_tokens=40) == \
        torch_lm.generate(["x"], greedy=True, max_new_tokens=40)


def test_load_predicts_and_evaluates_as_the_pytorch_classifier(classifier, classifier_onnx):
    assert is_onnx_dir(classifier_onnx) and not is_onnx_dir(classifier)
    torch_pred, onnx_pred = zerolm.load(classifier), zerolm.load(classifier_onnx)
    assert onnx_pred.meta == torch_pred.meta and onnx_pred.device == torch.device("cpu")
    want, got = torch_pred.predict(TEXTS), onnx_pred.predict(TEXTS)
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for g, w in zip(got, want):
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-5)
    a, b = torch_pred.evaluate(REVIEWS_DEV), onnx_pred.evaluate(REVIEWS_DEV)
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_the_crf_tagger_predicts_and_evaluates_as_pytorch(tagger, tagger_onnx):
    manifest = json.loads((tagger_onnx / "onnx.json").read_text())
    assert manifest["kind"] == "tag" and manifest["crf"] and (tagger_onnx / "crf.json").exists()
    torch_pred, onnx_pred = zerolm.load(tagger), zerolm.load(tagger_onnx)
    assert isinstance(onnx_pred.model.crf, ViterbiCRF)
    sentences = ["John Smith lives in Paris", "x", "the United Nations met in New York on Monday"]
    assert onnx_pred.predict(sentences) == torch_pred.predict(sentences)
    a, b = torch_pred.evaluate(NER_DEV), onnx_pred.evaluate(NER_DEV)
    assert a["f1"] == b["f1"] and a["per_type"] == b["per_type"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_numpy_viterbi_and_loss_equal_the_torch_crf():
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    torch.manual_seed(0)
    crf = CRF(len(labels), bio_constraints(labels))
    em = torch.randn(4, 6, len(labels)) * 3
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]], dtype=torch.bool)
    tags = torch.randint(0, len(labels), (4, 6))
    viterbi = ViterbiCRF(*(t.tolist() for t in crf._scores()))
    assert viterbi.decode(em, mask) == crf.decode(em, mask)
    with torch.no_grad():
        assert viterbi.nll(em, tags, mask).numpy() == pytest.approx(crf.nll(em, tags, mask).numpy(), abs=1e-4)


def test_int8_copy_is_smaller_and_keeps_the_labels(classifier, classifier_onnx):
    manifest = json.loads((classifier_onnx / "onnx.json").read_text())
    assert manifest["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    fp32, int8 = (classifier_onnx / "model.onnx").stat().st_size, (classifier_onnx / "model.int8.onnx").stat().st_size
    assert int8 < fp32 and manifest["int8"]["agreement"] >= manifest["int8"]["min_agreement"]
    q = zerolm.load(classifier_onnx / "model.int8.onnx")
    assert q.model.path.name == "model.int8.onnx"
    texts = [line.split("\t")[0] for line in REVIEWS_DEV.read_text().splitlines()[1:]]
    assert [p["label"] for p in q.predict(texts)] == [p["label"] for p in zerolm.load(classifier).predict(texts)]


def test_a_failed_parity_check_writes_nothing(classifier, tmp_path, monkeypatch):
    pred = zerolm.load(classifier)
    head = pred.model.head

    def branching_head(h, attention_mask=None):
        # a Python `if` on the input's length: the trace freezes the branch of its (2, 8)
        # inputs, and length 1 then comes out wrong
        return head(h, attention_mask) + (1.0 if h.shape[1] > 1 else 0.0)

    monkeypatch.setattr(pred.model, "head", branching_head)
    out = tmp_path / "onnx"
    with pytest.raises(ExportError, match=r"differs from PyTorch .* length 1.*nothing was written"):
        export_onnx(pred.model, out, tokenizer=pred.tokenizer, meta=pred.meta)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # over an existing directory (--overwrite) the old contents stay as they were
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ExportError):
        export_onnx(pred.model, out, tokenizer=pred.tokenizer, meta=pred.meta, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_plain_encoder_exports_its_hidden_states_for_embeddings(tmp_path):
    from zerolm.modeldir import save_model
    from zerolm.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=32,
                      dropout=0.0, attn_dropout=0.0)
    save_model(build_model(cfg), tmp_path / "enc")
    ref = zerolm.load(tmp_path / "enc")
    manifest = export_onnx(ref.model, tmp_path / "onnx", meta=ref.meta, int8=True)
    assert manifest["kind"] == "encoder" and manifest["outputs"][0]["name"] == "last_hidden_state"
    onnx = zerolm.load(tmp_path / "onnx")
    assert onnx.task is None
    ids, mask = _feed(99, 3, 11, seed=0)
    with torch.no_grad():
        want = ref.model.body(ids, attention_mask=mask).last_hidden_state
    got = onnx.model(ids, attention_mask=mask).last_hidden_state
    assert np.abs((got - want).numpy()).max() <= 1e-4


def test_cli_exports_and_predict_and_eval_take_the_directory(classifier, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(classifier), "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "ONNX matches PyTorch" in printed and "int8:" in printed
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.int8.onnx", "onnx.json", "model_config.json",
                                               "task.json", "tokenizer"}
    # a used directory is refused before anything runs, unless --overwrite
    assert main(["export", "onnx", str(classifier), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    for model in (classifier, out):
        assert main(["predict", str(model), "--input", str(REVIEWS_DEV), "--output",
                     str(tmp_path / f"{Path(model).name}.jsonl")]) == 0
        assert main(["eval", str(model), "--input", str(REVIEWS_DEV), "--json"]) == 0
    rows = {m: [json.loads(x)["pred_label"] for x in (tmp_path / f"{m}.jsonl").read_text().splitlines()]
            for m in ("best", "onnx")}
    assert rows["best"] == rows["onnx"] and len(rows["best"]) == 90
    evals = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert evals[0]["accuracy"] == evals[1]["accuracy"]


def test_cli_generate_and_eval_take_the_exported_lm(char_gpt, gpt_onnx, capsys):
    corpus = str(QUICKSTART / "corpus.txt")
    outs = []
    for model in (char_gpt, gpt_onnx):
        assert main(["generate", str(model), "--prompt", "the ", "--greedy", "--max-new-tokens", "20"]) == 0
        assert main(["eval", str(model), "--input", corpus, "--json", "--max-batches", "3"]) == 0
        text, report = capsys.readouterr().out.rsplit("\n", 2)[:2]
        outs.append((text, json.loads(report)))
    (text_t, rep_t), (text_o, rep_o) = outs
    assert text_t == text_o and rep_t["tokens"] == rep_o["tokens"]
    assert rep_t["loss"] == pytest.approx(rep_o["loss"], abs=1e-4)
