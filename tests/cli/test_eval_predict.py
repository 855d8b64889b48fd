"""`zerolm eval` on a fine-tuned model scores a labelled file with the report fine-tuning
prints; `zerolm predict` keeps every input column and adds the prediction beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zerolm
from zerolm.cli.main import main
from zerolm.config import FinetuneConfig, load_config
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
RES = REPO / "src" / "zerolm" / "resources" / "quickstart"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    cfg = load_config(TINY / "classify_reviews.yaml", [f"out_dir={out}", "train.epochs=1",
                                                       "train.progress=false"], cls=FinetuneConfig)
    finetune(cfg)
    return out


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    out = tmp_path_factory.mktemp("tag") / "run"
    cfg = load_config(TINY / "tag_ner.yaml", [f"out_dir={out}", "train.epochs=2", "train.progress=false"],
                      cls=FinetuneConfig)
    finetune(cfg)
    return out


def test_eval_json_on_the_dev_file_equals_what_fine_tuning_reported(classifier, capsys, tmp_path):
    saved = json.loads((classifier / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(classifier / "best"), "--input", str(RES / "reviews_dev.tsv"), "--json",
                 "--out", str(tmp_path / "ev")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(got) >= {"accuracy", "macro_f1"}
    assert got["accuracy"] == saved["accuracy"] and got["macro_f1"] == pytest.approx(saved["macro_f1"])
    assert got["loss"] == pytest.approx(saved["loss"], rel=1e-5)
    written = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert written["confusion_matrix"] == saved["confusion_matrix"]
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 1000
    # the run directory itself stands for its best model; the text report names the classes
    assert main(["eval", str(classifier), "--input", str(RES / "reviews_dev.tsv")]) == 0
    text = capsys.readouterr().out
    assert "negative" in text and "macro avg" in text


def test_eval_json_for_a_tagger_equals_fine_tuning(tagger, capsys):
    saved = json.loads((tagger / "eval.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(tagger / "best"), "--input", str(RES / "ner_dev.txt"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("f1", "precision", "recall"):
        assert got[k] == pytest.approx(saved[k], abs=1e-12)


def test_eval_of_a_labelled_file_with_an_unseen_label_names_file_and_line(classifier, tmp_path, capsys):
    bad = tmp_path / "test.tsv"
    bad.write_text("text\tlabel\na fine film\tpositive\nmeh\tneutral\n")
    assert main(["eval", str(classifier / "best"), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "neutral" in err


def test_predict_keeps_every_input_column_and_adds_predictions(classifier, tmp_path):
    src = tmp_path / "trec_like.tsv"
    src.write_text("label\ttext\tfine_label\npositive\ta lovely, moving film\tx:1\n"
                   "negative\ta dull, lifeless mess\tx:2\n")
    out = tmp_path / "preds.tsv"
    assert main(["predict", str(classifier / "best"), "--input", str(src), "--output", str(out)]) == 0
    lines = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert lines[0] == ["label", "text", "fine_label", "pred_label", "prob_negative", "prob_positive"]
    assert [r[:3] for r in lines[1:]] == [["positive", "a lovely, moving film", "x:1"],
                                         ["negative", "a dull, lifeless mess", "x:2"]]
    # JSONL keeps the columns too, and equals the in-memory API
    out_j = tmp_path / "preds.jsonl"
    assert main(["predict", str(classifier / "best"), "--input", str(src), "--output", str(out_j)]) == 0
    rows = [json.loads(x) for x in out_j.read_text().splitlines()]
    api = zerolm.load(classifier / "best").predict(["a lovely, moving film", "a dull, lifeless mess"])
    assert [r["pred_label"] for r in rows] == [a["label"] for a in api]
    assert [r["fine_label"] for r in rows] == ["x:1", "x:2"]


def test_load_predict_on_a_list_equals_predict_on_the_file(tagger, tmp_path):
    out = tmp_path / "tags.jsonl"
    assert main(["predict", str(tagger / "best"), "--input", str(RES / "ner_dev.txt"), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(set(r) == {"tokens", "tags", "pred_tags"} for r in rows)  # gold tags kept as `tags`
    tagger_api = zerolm.load(tagger / "best")
    got = tagger_api.predict([r["tokens"] for r in rows], batch_size=7)
    assert [g["tags"] for g in got] == [r["pred_tags"] for r in rows]


def test_load_a_pretrained_lm_generates_and_a_plain_encoder_explains_itself(tmp_path):
    from zerolm.errors import ConfigError
    from zerolm.train.pretrain import pretrain

    res = pretrain(load_config(TINY / "gpt_char.yaml", [f"out_dir={tmp_path / 'lm'}", "train.max_steps=2",
                                                        "train.progress=false"]))
    lm = zerolm.load(res.out_dir / "final")
    texts = lm.generate(["To be", "O"], max_new_tokens=5, greedy=True)
    assert len(texts) == 2 and all(len(t) == 5 for t in texts)  # a char model: 5 tokens, 5 characters
    assert lm.predict(["To be"])[0]["completion"].startswith(texts[0])  # greedy, 64 tokens
    assert lm.embed(["To be", "O"]).shape == (2, lm.model.config.d_model)
    enc = zerolm.load(res.out_dir / "final")
    enc.task = None
    with pytest.raises(ConfigError, match="no task head"):
        enc.predict(["x"])


def test_predict_keeps_jsonl_values_as_they_were_and_refuses_to_overwrite_a_column(classifier, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 7, "text": "a lovely film", "meta": {"a": [1, 2]}, "note": null}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(classifier / "best"), "--input", str(src), "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["id"] == 7 and row["meta"] == {"a": [1, 2]} and row["note"] is None
    assert row["pred_label"] in ("negative", "positive")
    clash = tmp_path / "clash.tsv"
    clash.write_text("text\tpred_label\na lovely film\tmine\n")
    assert main(["predict", str(classifier / "best"), "--input", str(clash), "--output", str(out)]) == 2
    assert "pred_label" in capsys.readouterr().err
