"""Token classification end to end on the shipped synthetic NER files, with and without a
CRF: reports, plot, task.json, and a reloaded model that predicts exactly as trained."""

import json
from pathlib import Path

import pytest
import torch

import zerolm
import zerolm.tasks.tag as tag
from zerolm.config import FinetuneConfig, load_config
from zerolm.data.conll import read_conll
from zerolm.eval.entities import entities
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "tag_ner.yaml"
LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize("crf", [False, True])
def test_tag_finetune_end_to_end_and_reload(tmp_path, monkeypatch, crf):
    built = []
    setup = tag.TaggingTask.setup
    monkeypatch.setattr(tag.TaggingTask, "setup",
                        classmethod(lambda cls, *a, **k: built.append(setup(*a, **k)) or built[-1]))
    cfg = load_config(TINY, [f"out_dir={tmp_path / 'run'}", f"task.crf={str(crf).lower()}",
                             "train.progress=false"], cls=FinetuneConfig)
    result, report = finetune(cfg)
    out = result.out_dir

    dev = read_conll(REPO / "src/zerolm/resources/quickstart/ner_dev.txt")
    saved = json.loads((out / "eval.json").read_text())
    assert saved["labels"] == LABELS and saved["crf"] is crf and saved["task"] == "tag"
    assert saved["words"] == sum(len(s.words) for s in dev) and saved["sentences"] == len(dev)
    gold = {t: sum(e[0] == t for s in dev for e in entities(s.tags)) for t in ("LOC", "ORG", "PER")}
    assert {t: saved["per_type"][t]["support"] for t in gold} == gold
    assert saved["f1"] == saved["micro"]["f1"] > 0.2  # it learnt something in 60 tiny steps
    assert (out / "entities.png").stat().st_size > 1000
    meta = json.loads((out / "best" / "task.json").read_text())
    assert meta["labels"] == LABELS and meta["crf"] is crf
    assert "micro avg" in tag.TaggingTask.format_report(saved)

    # the reloaded best model predicts exactly what the trained one does
    (st,) = built
    loaded = zerolm.load(out / "best")
    model, task = loaded.model, loaded.task
    assert (model.crf is not None) is crf
    for batch in st.dev_data.eval_batches():
        assert task.predict(model, batch) == st.task.predict(st.model, batch)
    metrics = task.evaluate(model, st.dev_data.eval_batches())
    assert metrics["f1"] == pytest.approx(saved["f1"]) and metrics["loss"] == pytest.approx(saved["loss"])
    if crf:  # Viterbi with BIO constraints never predicts I-X after O or another type
        tags = [p["tags"] for b in st.dev_data.eval_batches() for p in task.predict(model, b)]
        assert all(t.startswith("B-") or prev[2:] == t[2:] for seq in tags
                   for prev, t in zip(["O", *seq], seq) if t != "O")

    # `zerolm predict` input: sentences one per line give the same tags as the CoNLL file
    lines = tmp_path / "sentences.txt"
    lines.write_text("".join(" ".join(s.words) + "\n" for s in dev[:5]))
    preds = []
    for path in (REPO / "src/zerolm/resources/quickstart/ner_dev.txt", lines):
        inputs, records = task.read_inputs(path)
        data = task.batches(inputs, batch_size=4)
        rows = [None] * len(records)
        with torch.no_grad():
            for b in data.eval_batches():
                for i, p in zip(b.pop("index").tolist(), task.predict(model, b)):
                    rows[i] = {"tokens": records[i]["tokens"], **task.output_columns(p)}
        preds.append(rows)
    assert preds[0][:5] == preds[1] and preds[1][0]["tokens"] == dev[0].words
    text = task.write_predictions(preds[1], tmp_path / "pred.conll")
    assert [[ln.split("\t") for ln in s.splitlines()] for s in text.strip("\n").split("\n\n")] == \
        [[[w, t] for w, t in zip(r["tokens"], r["pred_tags"])] for r in preds[1]]
    # in memory: texts give the same tags, with entities at character offsets
    sents = [" ".join(s.words) for s in dev[:5]]
    got = loaded.predict(sents, batch_size=2)
    assert [g["tags"] for g in got] == [r["pred_tags"] for r in preds[1]]
    for g, text in zip(got, sents):
        for e in g["entities"]:
            assert text[e["start"]:e["end"]] == e["text"] and e["type"] in ("LOC", "ORG", "PER")


def test_words_cut_by_truncation_count_as_missed(tmp_path):
    cfg = load_config(TINY, [f"out_dir={tmp_path / 'run'}", "data.max_length=6", "train.max_steps=2",
                             "train.epochs=0", "train.progress=false"], cls=FinetuneConfig)
    result, report = finetune(cfg)
    assert report["truncated_train"] > 100  # most training sentences are longer than 4 words
    dev = read_conll(REPO / "src/zerolm/resources/quickstart/ner_dev.txt")
    assert report["words"] == sum(len(s.words) for s in dev)  # every gold word is scored
