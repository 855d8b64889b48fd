"""Joint intent detection + slot filling (task intent_slots) end to end on the tiny shipped
utterances: the weighted joint loss, overfitting both heads, a report that equals hand
counts and seqeval, unseen dev labels listed as errors, predictions with character
offsets that survive a reload, every strategy training both heads, and the CLI."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zerolm
from zerolm.cli.main import main
from zerolm.config import FinetuneConfig, load_config
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.slu import IntentSlotBatches, Labels, read_intent_slots
from zerolm.errors import ConfigError
from zerolm.models import build_model
from zerolm.models.config import ModelConfig
from zerolm.tasks import finetune_task
from zerolm.tasks.intent_slots import IntentSlotTask
from zerolm.tokenizers import Tokenizer
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "intent_slots.yaml"
TRAIN = REPO / "src/zerolm/resources/quickstart/slu_train.txt"
DEV = REPO / "src/zerolm/resources/quickstart/slu_dev.txt"

TOY = """# intent = book_flight
fly\tO
from\tO
saltmere\tB-from_city
to\tO
new\tB-to_city
harlow\tI-to_city

# intent = book_flight
fly\tO
to\tO
saltmere\tB-to_city
from\tO
eastholm\tB-from_city

# intent = check_weather
weather\tO
in\tO
new\tB-city
harlow\tI-city
tomorrow\tB-date

# intent = check_weather
rain\tO
in\tO
eastholm\tB-city
on\tO
friday\tB-date

# intent = play_music
play\tO
blue\tB-song
morning\tI-song
by\tO
mira\tB-artist
sol\tI-artist

# intent = set_alarm
wake\tO
me\tO
at\tO
seven\tB-time
am\tI-time
tomorrow\tB-date

"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny recipe with a CRF, trained once: (run directory, its FinetuneSetup, report)."""
    out = tmp_path_factory.mktemp("intent_slots") / "run"
    built = []
    setup = IntentSlotTask.setup
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IntentSlotTask, "setup",
                   classmethod(lambda cls, *a, **k: built.append(setup(*a, **k)) or built[-1]))
        # one thread: a tiny model gains nothing from more, and loses much on a busy machine
        cfg = load_config(TINY, [f"out_dir={out}", "task.crf=true", "train.progress=false", "train.threads=1"],
                          cls=FinetuneConfig)
        _, report = finetune(cfg)
    return out, built[0], report


def _tiny_model(intents, tags, crf: bool):
    body = build_model(ModelConfig(family="bert", vocab_size=400, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                                   max_seq_len=64))
    return IntentSlotTask._model(body, intents, tags, crf)


@pytest.fixture(scope="module")
def wordpiece():
    from zerolm.data.text import resolve_data_path

    return Tokenizer.train("wordpiece", [resolve_data_path("pkg:quickstart/corpus.txt")], 400)


def _first_subtoken_rows(batch):
    """Per row: (token positions, tag ids) of the words' first sub-tokens."""
    out = []
    for labels in batch["labels"]:
        pos = (labels != IGNORE_INDEX).nonzero().flatten()
        out.append((pos, labels[pos]))
    return out


@pytest.mark.parametrize("crf", [False, True])
def test_joint_loss_is_the_weighted_sum_of_intent_ce_and_slot_loss(wordpiece, crf):
    from zerolm.data.conll import tag_names

    utts = read_intent_slots(DEV)[:6]
    intents, tags = sorted({u.intent for u in utts}), tag_names([u.sentence for u in utts])
    task = IntentSlotTask(intents, tags, wordpiece, crf=crf, intent_weight=0.3, slot_weight=2.0)
    data = IntentSlotBatches(utts, task.intents, task.tags, wordpiece, max_length=64, batch_size=6, seed=0)
    batch = next(data.eval_batches())
    torch.manual_seed(0)
    model = _tiny_model(intents, tags, crf).eval()  # no dropout: the two forwards agree
    loss, metrics = task.loss(model, batch)

    out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    intent_ce = F.cross_entropy(out.intent_logits, batch["intent_labels"])
    total, words = 0.0, 0
    for row, (pos, gold) in enumerate(_first_subtoken_rows(batch)):
        em = out.slot_scores[row, pos]  # (W, C): each word's first sub-token
        if crf:
            total = total + model.crf.nll(em[None], gold[None], torch.ones(1, len(pos), dtype=torch.bool)).sum()
        else:
            total = total + F.cross_entropy(em, gold, reduction="sum")
        words += len(pos)
    assert words == int(batch["n_words"].sum())  # no word lost to truncation here
    torch.testing.assert_close(metrics["intent_loss"], intent_ce)
    torch.testing.assert_close(metrics["slot_loss"], total / words)
    torch.testing.assert_close(loss, 0.3 * intent_ce + 2.0 * total / words)
    loss.backward()  # both heads (and the CRF) take part
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith(("classifier.", "crf.")))


@pytest.mark.parametrize("crf", [False, True])
def test_a_tiny_model_overfits_a_toy_set_on_both_heads(tmp_path, crf):
    # 150 steps: at 60, one seed in eight (and CI's CPU once) left a slot wrong; 150 fits all eight
    toy = tmp_path / "toy.txt"
    toy.write_text(TOY, encoding="utf-8")
    cfg = load_config(None, [
        "init=null", "model.family=bert", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
        "model.d_ff=37", "model.max_seq_len=32", "model.dropout=0.0", "tokenizer.kind=wordpiece",
        "tokenizer.vocab_size=200", f"tokenizer.files=[{toy}]", f"data.train={toy}", f"data.dev={toy}",
        "task.name=intent_slots", "task.head_dropout=0", f"task.crf={str(crf).lower()}", "optim.lr=1e-2",
        "optim.weight_decay=0", "schedule.name=constant", "train.max_steps=150", "train.batch_size=6",
        f"out_dir={tmp_path / 'run'}", "train.progress=false", "train.early_stopping.metric=val_frame_accuracy",
        "train.early_stopping.mode=max", "train.threads=1"], cls=FinetuneConfig)
    _, report = finetune(cfg)
    assert report["intent_accuracy"] == 1.0 and report["slot_f1"] == 1.0 and report["frame_accuracy"] == 1.0
    assert report["utterances"] == 6 and report["slots"]["micro"]["support"] == 12


def test_report_equals_hand_counts_and_seqeval(trained):
    seqeval = pytest.importorskip("seqeval.metrics")
    out, st, report = trained
    saved = json.loads((out / "eval.json").read_text())
    assert saved["task"] == "intent_slots" and saved["metric"] == "frame_accuracy" and saved["crf"] is True
    dev = read_intent_slots(DEV)
    loaded = zerolm.load(out / "best")
    preds = loaded.predict([u.words for u in dev], batch_size=7)
    gold_tags = [u.sentence.tags for u in dev]
    frames = sum(p["intent"] == u.intent and p["tags"] == u.sentence.tags for p, u in zip(preds, dev))
    intents = sum(p["intent"] == u.intent for p, u in zip(preds, dev))
    assert saved["frame_accuracy"] == pytest.approx(frames / len(dev))
    assert saved["intent_accuracy"] == pytest.approx(intents / len(dev))
    assert 0 < frames < intents  # a real mix of right and wrong frames, not a trivial 0 or 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = seqeval.classification_report(gold_tags, [p["tags"] for p in preds], output_dict=True)
    assert saved["slot_f1"] == pytest.approx(ref["micro avg"]["f1-score"], abs=1e-12)
    assert saved["slot_precision"] == pytest.approx(ref["micro avg"]["precision"], abs=1e-12)
    assert saved["slot_recall"] == pytest.approx(ref["micro avg"]["recall"], abs=1e-12)
    for etype, r in saved["slots"]["per_type"].items():
        assert r["f1"] == pytest.approx(ref[etype]["f1-score"], abs=1e-12) and r["support"] == ref[etype]["support"]
    assert saved["unseen"] == {"intents": {}, "tags": {}}
    assert sum(map(sum, saved["intents"]["confusion_matrix"])) == len(dev)
    text = IntentSlotTask.format_report(saved)
    assert "frame accuracy" in text and "micro avg" in text and "book_flight" in text
    assert (out / "confusion.png").stat().st_size > 1000


def test_unseen_dev_intent_and_tag_are_listed_errors_not_crashes(tmp_path, trained):
    dev = tmp_path / "dev.txt"
    dev.write_text(DEV.read_text().split("\n\n", 4)[4] + "# intent = cancel_order\ncancel\tO\norder\tO\n"
                   "k12\tB-order_ref\n\n# intent = book_flight\nfly\tO\nto\tO\nsaltmere\tB-to_city\nin\tO\n"
                   "business\tB-seat_class\nclass\tI-seat_class\n\n", encoding="utf-8")
    n = len(read_intent_slots(dev))
    # training with such a dev file runs, and its report lists them
    cfg = load_config(TINY, [f"out_dir={tmp_path / 'run'}", f"data.dev={dev}", "train.max_steps=2",
                             "train.progress=false", "train.threads=1"], cls=FinetuneConfig)
    _, report = finetune(cfg)
    assert report["unseen"] == {"intents": {"cancel_order": 1}, "tags": {"B-order_ref": 1, "B-seat_class": 1,
                                                                         "I-seat_class": 1}}
    assert (tmp_path / "run" / "confusion.png").exists()
    # the trained model scores them as errors: the unseen intent is a row no prediction reaches
    loaded = zerolm.load(trained[0] / "best")
    rep = loaded.evaluate(dev)
    assert rep["unseen"] == report["unseen"]
    row = rep["intents"]["per_class"]["cancel_order"]
    assert row["support"] == 1 and row["recall"] == 0.0
    assert rep["intents"]["labels"][-1] == "cancel_order"
    assert "order_ref" in rep["slots"]["per_type"] and rep["slots"]["per_type"]["order_ref"]["recall"] == 0.0
    preds = loaded.predict([u.words for u in read_intent_slots(dev)])
    right = sum(p["intent"] == u.intent and p["tags"] == u.sentence.tags
                for p, u in zip(preds, read_intent_slots(dev)))
    assert rep["frame_accuracy"] == pytest.approx(right / n) and right <= n - 2
    text = IntentSlotTask.format_report(rep)
    assert "cancel_order (1 utterance)" in text and "B-seat_class (1 word)" in text
    assert "cancel_order" not in loaded.task.intent_names  # the trained labels are untouched


def test_predict_gives_character_offsets_and_survives_a_reload(trained):
    out, st, _ = trained
    loaded = zerolm.load(out / "best")
    # the reloaded best model predicts exactly what the trained one does
    for batch in st.dev_data.eval_batches():
        assert loaded.task.predict(loaded.model, batch) == st.task.predict(st.model, batch)
    text = "  i want to fly from saltmere  to new harlow tomorrow "
    (rec,) = loaded.predict(text)
    assert set(rec) == {"intent", "intent_score", "intent_probs", "tokens", "tags", "slots"}
    assert rec["tokens"] == text.split() and len(rec["tags"]) == len(rec["tokens"])
    assert rec["intent"] in loaded.task.intent_names
    probs = list(rec["intent_probs"].values())
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert rec["intent_score"] == probs[0] and next(iter(rec["intent_probs"])) == rec["intent"]
    assert rec["slots"]  # the tiny model finds some
    for s in rec["slots"]:
        first, last = s["words"]
        assert text[s["start"]:s["end"]] == s["text"] == " ".join(rec["tokens"][first:last + 1])
        assert rec["tags"][first] == f"B-{s['type']}"
    (words,) = loaded.predict([rec["tokens"]])  # a list of words: offsets into the words joined by spaces
    joined = " ".join(rec["tokens"])
    assert words["tags"] == rec["tags"]
    assert [(s["start"], s["end"]) for s in words["slots"]] == [(joined.index(s["text"]), joined.index(s["text"])
                                                                 + len(s["text"])) for s in words["slots"]]

    # a fresh process loads the same model and predicts the same
    texts = [text, "play blue morning by mira sol", "will it rain in westfell on friday"]
    code = ("import json, sys, zerolm; p = zerolm.load(sys.argv[1]); "
            "print(json.dumps(p.predict(json.loads(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "best"), json.dumps(texts)],
                          capture_output=True, text=True, check=True)
    fresh = json.loads(proc.stdout)
    here = loaded.predict(texts)
    for a, b in zip(fresh, here):
        assert {k: v for k, v in a.items() if k not in ("intent_score", "intent_probs")} == \
               {k: v for k, v in b.items() if k not in ("intent_score", "intent_probs")}
        assert a["intent_score"] == pytest.approx(b["intent_score"], abs=1e-5)


def test_every_strategy_trains_both_heads_and_the_crf(wordpiece):
    from zerolm.peft import STRATEGIES, apply_strategy

    utts = read_intent_slots(DEV)[:4]
    task = IntentSlotTask(["book_flight", "check_weather", "find_restaurant", "x"], ["O", "B-city", "I-city",
                                                                                    "B-date", "I-date"], wordpiece)
    data = IntentSlotBatches(utts, Labels(task.intent_names), Labels(task.tag_names), wordpiece, max_length=64,
                             batch_size=4, seed=0)
    batch = next(data.eval_batches())
    batch.pop("index")
    for name in STRATEGIES:
        torch.manual_seed(0)
        model = _tiny_model(task.intent_names, task.tag_names, crf=True)
        apply_strategy(model, name, freeze_layers=1, lora_rank=2, adapter_size=3, prompt_length=4)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        heads = {n for n, _ in model.named_parameters() if n.startswith(("classifier.", "crf."))}
        assert heads == {f"classifier.{h}.{w}" for h in ("intent", "slot") for w in ("weight", "bias")} | \
               {"crf.transitions", "crf.start", "crf.end"}
        assert heads <= trainable, name
        if name == "head_only":
            assert trainable == heads
        loss, _ = task.loss(model, batch)
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if n in heads), name


def test_config_checks_the_joint_settings():
    ok = load_config(TINY, ["task.crf=true", "task.intent_weight=0.5", "task.slot_weight=0"])
    assert ok.task.crf and ok.task.intent_weight == 0.5 and ok.task.slot_weight == 0.0
    for overrides, message in [
        (["task.intent_weight=-1"], "task.intent_weight must be a number >= 0"),
        (["task.intent_weight=0", "task.slot_weight=0"], "both 0"),
        (["task.name=classify", "task.slot_weight=2", "train.early_stopping.metric=val_accuracy"],
         "task.slot_weight needs task.name 'intent_slots'"),
        (["train.early_stopping.metric=val_accuracy"], "val_frame_accuracy"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY, overrides)
    assert finetune_task("intent_slots") is IntentSlotTask


def test_cli_finetune_predict_and_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", str(TINY), f"out_dir={out}", "train.epochs=2", "train.progress=false",
                 "train.threads=1"]) == 0
    best = out / "best"
    meta = json.loads((best / "task.json").read_text())
    assert meta["task"] == "intent_slots" and meta["crf"] is False and meta["pooling"] == "mean"
    assert meta["intents"] == sorted({u.intent for u in read_intent_slots(TRAIN)})
    dev = read_intent_slots(DEV)

    # the joint format in, the joint format out (predicted intent and tags)
    assert main(["predict", str(best), "--input", "pkg:quickstart/slu_dev.txt", "--output",
                 str(tmp_path / "pred.txt")]) == 0
    blocks = [b.splitlines() for b in (tmp_path / "pred.txt").read_text().strip("\n").split("\n\n")]
    assert all(b[0].startswith("# intent = ") for b in blocks)
    intents = [b[0][len("# intent = "):] for b in blocks]
    tags = [[ln.split("\t")[1] for ln in b[1:]] for b in blocks]  # as predicted (no IOB2 repair)
    assert [[ln.split("\t")[0] for ln in b[1:]] for b in blocks] == [u.words for u in dev]
    assert set(intents) <= set(meta["intents"])
    # a table's text column, and plain lines, give the same predictions
    (tmp_path / "dev.tsv").write_text("text\tlabel\n" + "".join(f"{' '.join(u.words)}\t{u.intent}\n" for u in dev))
    (tmp_path / "dev_lines.txt").write_text("".join(" ".join(u.words) + "\n" for u in dev))
    assert main(["predict", str(best), "--input", str(tmp_path / "dev.tsv"), "--output",
                 str(tmp_path / "pred.tsv")]) == 0
    assert main(["predict", str(best), "--input", str(tmp_path / "dev_lines.txt"), "--output",
                 str(tmp_path / "pred.jsonl")]) == 0
    rows = [ln.split("\t") for ln in (tmp_path / "pred.tsv").read_text().splitlines()]
    assert rows[0] == ["text", "label", "pred_intent", "pred_intent_score", "pred_tags"]
    assert [r[2] for r in rows[1:]] == intents and [r[4].split() for r in rows[1:]] == tags
    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["pred_intent"] for r in lines] == intents and [r["pred_tags"] for r in lines] == tags
    assert lines[0]["text"] == " ".join(dev[0].words)

    capsys.readouterr()
    assert main(["eval", str(best), "--input", "pkg:quickstart/slu_dev.txt", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "eval.json").read_text())
    assert f"frame accuracy {saved['frame_accuracy']:.4f}" in printed and "slots (entities):" in printed
    assert (tmp_path / "ev" / "confusion.png").exists()


def test_onnx_export_refuses_the_joint_task_with_a_clear_error(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code = main(["export", "onnx", str(trained[0] / "best"), "--out", str(tmp_path / "onnx")])
    assert code != 0
    assert "not task 'intent_slots'" in capsys.readouterr().err
