"""Causal-LM fine-tuning on prompt / completion pairs, `zerolm predict` and `zerolm compare`
end to end on the data shipped with zerolm."""

import json
from pathlib import Path

import pytest
import torch

import zerolm
from zerolm.cli.main import main
from zerolm.config import FinetuneConfig, load_config
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.prompts import PromptCompletionBatches, PromptExample
from zerolm.errors import ZeroLMError
from zerolm.eval.compare import split_overrides
from zerolm.tasks.base import to_device
from zerolm.tokenizers import Tokenizer
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
CORPUS = REPO / "src" / "zerolm" / "resources" / "quickstart" / "corpus.txt"


def test_prompt_completion_labels_cover_the_completion_only():
    tok = Tokenizer.train("bpe", [CORPUS], vocab_size=400)
    ex = [PromptExample("Review: a fine film\nSentiment:", " positive", "x:1"),
          PromptExample("Q: what is two and two?\nA:", " four, of course", "x:2")]
    data = PromptCompletionBatches(ex, tok, max_length=64, batch_size=2, seed=0)
    b = data.collate([0, 1])
    for row, e in enumerate(ex):
        target = tok.encode(e.completion, add_special_tokens=False) + [tok.eos_id]
        labels = b["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == target
        # inputs then the last label spell prompt + completion + end-of-text
        n = int(b["attention_mask"][row].sum())
        seq = b["input_ids"][row, :n].tolist() + [int(labels[n - 1])]
        assert seq == tok.encode(e.prompt, add_special_tokens=False) + target
    # truncation drops the start of the prompt, never the completion
    targets = [tok.encode(e.completion, add_special_tokens=False) + [tok.eos_id] for e in ex]
    limit = max(map(len, targets)) + 1
    short = PromptCompletionBatches(ex, tok, max_length=limit, batch_size=2, seed=0)
    assert short.truncated == 2
    for seq, target in zip(short.seqs, targets):
        assert seq[-len(target):] == target and len(seq) <= limit + 1


def test_causal_lm_finetuning_and_predict(tmp_path):
    cfg = load_config(TINY / "clm_prompts.yaml", [f"out_dir={tmp_path / 'run'}", "train.epochs=1"],
                      cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["task"] == "clm" and report["metric"] == "perplexity"
    assert report["perplexity"] == pytest.approx(2.718281828 ** report["loss"], rel=1e-6)
    assert report["tokens"] > 90  # every dev completion token, end-of-text included
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(result.out_dir / "best"), "--input", "pkg:quickstart/reviews_prompts_dev.jsonl",
                 "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 90 and all(set(r) == {"prompt", "completion", "pred_completion"} for r in rows)
    # the input's own completion column is kept, the generated one is beside it
    dev = [json.loads(x) for x in (REPO / "src/zerolm/resources/quickstart/reviews_prompts_dev.jsonl")
           .read_text().splitlines()]
    assert [r["completion"] for r in rows] == [d["completion"] for d in dev]
    assert rows[0]["prompt"].startswith("Review: ")


@pytest.mark.parametrize("strategy", ["lora", "prompt"])
def test_predict_matches_the_trained_model_and_keeps_input_order(tmp_path, strategy):
    cfg = load_config(TINY / "classify_reviews.yaml",
                      [f"out_dir={tmp_path / 'run'}", "train.epochs=1", f"strategy.name={strategy}",
                       "strategy.prompt.length=4"], cls=FinetuneConfig)
    result, report = finetune(cfg)
    loaded = zerolm.load(result.out_dir / "best")
    model, tok, task, meta = loaded.model, loaded.tokenizer, loaded.task, loaded.meta
    assert meta["labels"] == ["negative", "positive"] and meta["strategy"]["name"] == strategy
    out = tmp_path / "preds.tsv"
    assert main(["predict", str(result.out_dir / "best"), "--input", "pkg:quickstart/reviews_dev.tsv",
                 "--output", str(out), "--batch-size", "7"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["text", "label", "pred_label", "prob_negative", "prob_positive"]
    dev = (REPO / "src/zerolm/resources/quickstart/reviews_dev.tsv").read_text().splitlines()[1:]
    assert [ln.split("\t")[0] for ln in lines[1:]] == [d.split("\t")[0] for d in dev]
    # the reloaded model predicts what the trained one reported on dev
    assert [ln.split("\t")[1] for ln in lines[1:]] == [d.split("\t")[1] for d in dev]  # gold kept
    predicted = [ln.split("\t")[2] for ln in lines[1:]]
    truth = [d.split("\t")[1] for d in dev]
    acc = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert acc == pytest.approx(report["accuracy"])
    for ln in lines[1:]:
        assert float(ln.split("\t")[3]) + float(ln.split("\t")[4]) == pytest.approx(1.0, abs=1e-5)
    batch = to_device(tok.pad(tok.encode_batch(["a lovely film"])["input_ids"]), torch.device("cpu"))
    assert task.predict(model, batch)[0]["label"] in meta["labels"]
    # the in-memory API gives what `zerolm predict` wrote, in input order
    texts = [d.split("\t")[0] for d in dev]
    records = loaded.predict(texts, batch_size=5)
    assert [r["label"] for r in records] == predicted
    assert records[0]["probs"]["negative"] == pytest.approx(float(lines[1].split("\t")[3]), abs=1e-6)


def test_compare_writes_a_table_and_resumes(tmp_path, capsys):
    args = ["compare", str(TINY / "classify_reviews.yaml"), "--strategies", "head_only,bitfit",
            "--out-dir", str(tmp_path), "train.max_steps=3", "train.epochs=0", "bitfit:optim.lr=3e-3"]
    assert main(args) == 0
    root = tmp_path
    rows = json.loads((root / "compare.json").read_text())
    assert [r["strategy"] for r in rows] == ["head_only", "bitfit"]
    assert rows[1]["overrides"] == ["optim.lr=3e-3"] and rows[0]["overrides"] == []
    assert rows[0]["trainable"] < rows[1]["trainable"] < rows[0]["total"]
    for r in rows:  # each row is its run's own report
        saved = json.loads((root / r["strategy"] / "eval.json").read_text())
        assert r["metric"] == "accuracy" and r["value"] == saved["accuracy"] and r["peak_rss_mb"] > 0
    assert "| head_only |" in (root / "compare.md").read_text()
    assert (root / "compare.png").stat().st_size > 1000
    assert "lr: 0.003" in (root / "bitfit" / "config.yaml").read_text()
    stamp = (root / "head_only" / "eval.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished strategies are read back, not retrained
    assert (root / "head_only" / "eval.json").stat().st_mtime_ns == stamp
    assert "| bitfit |" in capsys.readouterr().out
    # --force retrains into the used run directories (they are overwritten, not refused)
    assert main([*args, "--force"]) == 0
    assert (root / "head_only" / "eval.json").stat().st_mtime_ns != stamp


def test_compare_rejects_overrides_for_strategies_not_compared():
    common, per = split_overrides(["train.epochs=1", "lora:optim.lr=1e-3"], ["full", "lora"])
    assert common == ["train.epochs=1"] and per == {"full": [], "lora": ["optim.lr=1e-3"]}
    with pytest.raises(ZeroLMError, match="names strategy 'adapter'"):
        split_overrides(["adapter:strategy.adapter.size=8"], ["full", "lora"])
