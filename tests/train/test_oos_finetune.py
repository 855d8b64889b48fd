"""Out-of-scope detection in the classify task: config errors, predictions, the report,
and the calibrated threshold through fine-tuning, save and zerolm.load."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import zerolm
from zerolm.cli.main import main
from zerolm.config import FinetuneConfig, load_config
from zerolm.errors import ConfigError
from zerolm.eval.oos import NO_CLASS, OutOfScope, oos_scores
from zerolm.tasks import ClassificationTask
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
OOS_YAML = TINY / "classify_intents_oos.yaml"
DATA = REPO / "src" / "zerolm" / "resources" / "quickstart"


class FixedLogits(nn.Module):
    """A classifier that answers every batch with the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.dummy = nn.Parameter(torch.zeros(1))  # device_of needs a parameter

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.logits[: len(input_ids)]


def batch_of(n):
    return {"input_ids": torch.zeros(n, 3, dtype=torch.long), "labels": torch.zeros(n, dtype=torch.long)}


# classes a, b, oos; row 0 clearly a, row 1 the oos class, row 2 a but unsure
LOGITS = [[4.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.8, 0.5]]


def test_predictions_carry_in_scope_and_the_score():
    names = ["a", "b", "oos"]
    task = ClassificationTask(names, oos=OutOfScope("oos", 2, "msp", threshold=0.45))
    preds = task.predict(FixedLogits(LOGITS), batch_of(3))
    p = torch.tensor(LOGITS).softmax(-1)
    s = oos_scores(torch.tensor(LOGITS), "msp", 2)
    assert [r["in_scope"] for r in preds] == [True, False, False]
    assert [r["label"] for r in preds] == ["a", "oos", "oos"]
    # the best in-scope class stays readable whatever the decision
    assert [r["top_label"] for r in preds] == ["a", "b", "a"]
    assert preds[1]["top_score"] == pytest.approx(p[1, 1].item(), abs=1e-6)
    assert [r["oos_score"] for r in preds] == pytest.approx(s.tolist(), abs=1e-6)
    assert preds[2]["oos_score"] > 0.45 and preds[2]["score"] == pytest.approx(1 - preds[2]["top_score"], abs=1e-6)
    assert preds[0]["score"] == preds[0]["top_score"] and set(preds[0]["probs"]) == set(names)
    cols = task.output_columns(preds[2])
    assert (cols["pred_label"], cols["pred_in_scope"], cols["pred_top_label"]) == ("oos", False, "a")
    # without a threshold only the oos class decides
    only_class = ClassificationTask(names, oos=OutOfScope("oos", 2, "msp"))
    assert [r["in_scope"] for r in only_class.predict(FixedLogits(LOGITS), batch_of(3))] == [True, False, True]
    # no out-of-scope detection: the records are as they always were
    plain = ClassificationTask(names).predict(FixedLogits(LOGITS), batch_of(3))
    assert all(set(r) == {"label", "score", "probs"} for r in plain) and plain[1]["label"] == "oos"


def test_report_counts_an_oos_decision_on_an_in_scope_query_as_wrong():
    names = ["a", "b"]  # no oos class: a threshold alone detects out of scope
    task = ClassificationTask(names, oos=OutOfScope("oos", None, "msp", threshold=0.3))
    logits = [[4.0, 0.0], [0.2, 0.0], [0.0, 3.0], [0.3, 0.0]]
    batch = batch_of(4)
    batch["labels"] = torch.tensor([0, 0, 1, NO_CLASS])  # the last is an out-of-scope query
    rep = task.evaluate(FixedLogits(logits), [batch])
    # scores 1 - max p: 0.018, 0.450, 0.047, 0.426. Rows 1 and 3 are out of scope, 0 and 2 in
    # scope and right
    assert rep["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert rep["oos_recall"] == 1.0 and rep["oos_precision"] == 0.5
    assert rep["oos_auroc"] == pytest.approx(2 / 3)  # the oos query scores below row 1's, above 0 and 2
    assert rep["labels"] == ["a", "b", "oos"]  # the oos label joins the confusion matrix
    assert rep["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert rep["accuracy"] == pytest.approx(3 / 4)
    # the loss skips the out-of-scope query (it has no class)
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits[:3]), torch.tensor([0, 0, 1]))
    assert rep["loss"] == pytest.approx(ce.item(), rel=1e-5)
    text = ClassificationTask.format_report(rep)
    assert "in-scope accuracy 66.67" in text and "AUROC 66.67" in text


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    runs = iter(range(100))

    def cfg(*overrides, path=OOS_YAML):
        return load_config(path, [f"out_dir={tmp_path / f'run{next(runs)}'}", "train.progress=false", *overrides],
                           cls=FinetuneConfig)

    with pytest.raises(ConfigError, match=r"task.oos_label: out-of-scope detection is for task.name "
                                          r"'classify', got 'tag'; remove the task.oos_\* keys"):
        cfg("task.oos_threshold=auto", "task.oos_label=O", path=TINY / "tag_ner.yaml")
    with pytest.raises(ConfigError, match="task.oos_threshold needs task.oos_label"):
        cfg("task.oos_label=null")
    with pytest.raises(ConfigError, match="task.oos_threshold must be a number, auto .* got 'high'"):
        cfg("task.oos_threshold=high")
    with pytest.raises(ConfigError, match=r"task.oos_in_scope_recall \(0.9\) calibrates the threshold: it "
                                          r"needs task.oos_threshold=auto"):
        cfg("task.oos_threshold=0.5", "task.oos_in_scope_recall=0.9")
    with pytest.raises(ConfigError, match=r"oos_in_scope_recall must be a share in \(0, 1\]"):
        cfg("task.oos_in_scope_recall=95")
    with pytest.raises(ConfigError, match="task.oos_score: 'maha' is not one of"):
        cfg("task.oos_score=maha")
    assert cfg("task.oos_threshold=0.5").task.oos_threshold == 0.5  # a number is a fixed threshold
    # checked against the data when it is read: the label must be a class unless a threshold is set
    with pytest.raises(ConfigError, match="task.oos_label 'out_of_scope' is not a label of the training data "
                                          ".*set task.oos_threshold"):
        finetune(cfg("task.oos_label=out_of_scope", "task.oos_threshold=null"))
    no_oos_dev = tmp_path / "dev.tsv"
    no_oos_dev.write_text("".join(ln for ln in (DATA / "intents_oos_dev.tsv").read_text().splitlines(True)
                                  if not ln.rstrip().endswith("\toos")))
    with pytest.raises(ConfigError, match="has no 'oos' rows: add out-of-scope examples to it, or set "
                                          "task.oos_in_scope_recall"):
        finetune(cfg(f"data.dev={no_oos_dev}"))


def test_finetune_with_an_oos_class_calibrates_saves_and_reloads_the_threshold(tiny_run, tmp_path):
    run = tiny_run("classify_intents_oos.yaml")
    report = json.loads((run / "eval.json").read_text())
    oos = report["oos"]
    assert oos["class"] and oos["score"] == "msp" and "two-fold cross-calibration" in oos["measured"]
    assert len(oos["fold_thresholds"]) == 2 and oos["n_in_scope"] == 32 and oos["n_oos"] == 10
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_auroc"):
        assert 0 <= report[key] <= 1
    assert report["oos_auroc"] > 0.6  # the tiny model tells the made-up oos queries apart somewhat
    assert "fitted_meta" not in report and (run / "oos_scores.png").stat().st_size > 1000
    meta = json.loads((run / "best" / "task.json").read_text())["oos"]
    assert meta["threshold"] == oos["threshold"] and meta["rule"] is None and meta["label"] == "oos"

    pred = zerolm.load(run)
    assert pred.task.oos.threshold == oos["threshold"]
    texts = ["what is my account balance", "who painted the mona lisa", "i lost my debit card"]
    records = pred.predict(texts)
    assert all({"in_scope", "oos_score", "top_label", "top_score"} <= set(r) for r in records)
    for r in records:
        out = r["probs"]["oos"] == max(r["probs"].values()) or r["oos_score"] > oos["threshold"]
        assert r["in_scope"] == (not out) and (r["label"] == "oos") == out
    # the loaded model scores dev at the saved threshold: the figures calibrated and measured
    # on all of dev, which the fine-tuning report gives beside the cross-calibrated ones
    again = pred.evaluate("pkg:quickstart/intents_oos_dev.tsv")
    assert again["oos"]["measured"] == "at the model's threshold"
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision"):
        assert again[key] == pytest.approx(oos["same_set"][key])
    assert again["oos_auroc"] == pytest.approx(report["oos_auroc"])
    # `zerolm predict` writes the decision beside each row
    out_file = tmp_path / "preds.tsv"
    assert main(["predict", str(run), "--input", "pkg:quickstart/intents_oos_dev.tsv", "--output",
                 str(out_file)]) == 0
    header = out_file.read_text().splitlines()[0].split("\t")
    assert {"pred_label", "pred_in_scope", "pred_oos_score", "pred_top_label"} <= set(header)


def test_a_threshold_alone_on_a_model_trained_without_oos_queries(tmp_path):
    train = tmp_path / "train.tsv"  # the tiny intents without their oos rows
    train.write_text("".join(ln for ln in (DATA / "intents_oos.tsv").read_text().splitlines(True)
                             if not ln.rstrip().endswith("\toos")))
    cfg = load_config(OOS_YAML, [f"out_dir={tmp_path / 'run'}", f"data.train={train}", "train.epochs=2",
                                 "task.oos_score=energy", "task.oos_in_scope_recall=0.9", "train.progress=false"],
                      cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["labels"][-1] == "oos" and "oos" not in report["labels"][:-1]  # no class, a report column
    assert report["oos"]["class"] is False and report["oos"]["score"] == "energy"
    assert report["oos"]["same_set"]["in_scope_recall"] >= 0.9  # the rule's promise on its own data
    meta = json.loads((result.out_dir / "best" / "task.json").read_text())
    assert meta["labels"] == ["check_balance", "lost_card", "opening_hours", "transfer_money"]
    pred = zerolm.load(result.out_dir)
    assert pred.task.oos.threshold == report["oos"]["threshold"] and pred.task.oos.oos_index is None
    records = pred.predict(["how do i bake sourdough bread", "what is my balance"])
    for r in records:
        assert r["in_scope"] == (r["oos_score"] <= meta["oos"]["threshold"])
        assert r["label"] == (r["top_label"] if r["in_scope"] else "oos")


def test_an_onnx_export_decides_out_of_scope_as_pytorch(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from zerolm.export import export_onnx

    run = tiny_run("classify_intents_oos.yaml")
    ref = zerolm.load(run)
    export_onnx(ref.model, tmp_path / "onnx", tokenizer=ref.tokenizer, meta=ref.meta, source=str(run))
    onnx = zerolm.load(tmp_path / "onnx")
    assert onnx.task.oos.threshold == ref.task.oos.threshold
    texts = [ln.split("\t")[0] for ln in (DATA / "intents_oos_dev.tsv").read_text().splitlines()[1:]]
    for a, b in zip(ref.predict(texts), onnx.predict(texts)):
        assert (a["label"], a["in_scope"], a["top_label"]) == (b["label"], b["in_scope"], b["top_label"])
        assert a["oos_score"] == pytest.approx(b["oos_score"], abs=1e-4)
