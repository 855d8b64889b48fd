"""`zerolm distill` end to end on tiny models: classification (TinyBERT and MiniLM losses,
a narrower student with projections), tagging with a CRF, and a causal LM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import zerolm
from zerolm.cli.main import main
from zerolm.config import DistillConfig, FinetuneConfig, load_config
from zerolm.errors import ConfigError
from zerolm.train.distill import distill
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"


@pytest.fixture
def teacher(tiny_run) -> Path:
    return tiny_run("classify_reviews.yaml", "train.epochs=2") / "best"


def cfg(teacher: Path, out: Path, *over: str) -> DistillConfig:
    return load_config(TINY / "distill_classify.yaml", [f"teacher={teacher}", f"out_dir={out}",
                                                        "train.progress=false", *over], cls=DistillConfig)


def test_a_distilled_student_saves_reloads_and_predicts_as_trained(teacher, tmp_path):
    result, report = distill(cfg(teacher, tmp_path / "d", "distill.minilm=1.0"))
    saved = json.loads((tmp_path / "d" / "distill.json").read_text())
    assert saved["metric"] == "accuracy" and saved["student_params"] < saved["teacher_params"]
    assert saved["retention"] == pytest.approx(saved["student"]["accuracy"] / saved["teacher"]["accuracy"])
    lat = saved["latency"]
    assert lat["batch_sizes"][0] == 1 and len(lat["teacher_ms"]) == len(lat["student_ms"]) == 2
    assert lat["threads"] == min(2, len(os.sched_getaffinity(0)))  # quoted at 2 threads, whatever trained
    assert lat["speedup"] == pytest.approx([t / s for t, s in zip(lat["teacher_ms"], lat["student_ms"])])
    assert 0 < saved["student_bytes"] < saved["teacher_bytes"]  # one block of two
    assert (tmp_path / "d" / "distill.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in rows for k in r}
    assert {"hard_loss", "soft_loss", "hidden_loss", "attention_loss", "minilm_loss"} <= logged
    student = zerolm.load(tmp_path / "d")
    assert student.model.config.n_layers == 1 and student.meta["distilled_from"] == str(teacher)
    texts = ["a lovely, moving film", "a dull and lifeless mess", "fine"]
    first = student.predict(texts)
    again = zerolm.load(tmp_path / "d").predict(texts)
    assert first == again
    # the student's dev accuracy in distill.json is what `zerolm eval` finds
    ev = student.evaluate("pkg:quickstart/reviews_dev.tsv")
    assert ev["accuracy"] == saved["student"]["accuracy"]


def test_a_narrower_student_trains_projections_that_are_not_saved(teacher, tmp_path):
    distill(cfg(teacher, tmp_path / "n", "student.d_model=16", "student.init=random", "distill.attention=0",
                "train.max_steps=3"))
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "n" / "best" / "model.safetensors")))
    assert not any(k.startswith("proj") for k in keys) and "body.tok_emb.weight" in keys
    assert zerolm.load(tmp_path / "n").model.config.d_model == 16


def test_a_bad_layer_map_stops_before_training_naming_the_index(teacher, tmp_path):
    with pytest.raises(ConfigError, match=r"layer_map\[0\] = 7: the teacher has layers 0..1"):
        distill(cfg(teacher, tmp_path / "bad", "distill.layer_map=[7]"))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_heads_must_match_for_attention_losses(teacher, tmp_path):
    with pytest.raises(ConfigError, match="student has 2 heads, the teacher 4"):
        distill(cfg(teacher, tmp_path / "h", "student.n_heads=2", "student.init=random"))


def test_a_student_from_another_vocabulary_is_refused(teacher, tmp_path):
    from zerolm.train.pretrain import pretrain

    other = pretrain(load_config(TINY / "gpt_char.yaml", [f"out_dir={tmp_path / 'o'}", "train.max_steps=1"]))
    with pytest.raises(ConfigError, match="must share the tokenizer"):
        distill(cfg(teacher, tmp_path / "v", f"student.init={other.out_dir / 'final'}"))


def test_a_crf_tagger_distils(tmp_path):
    t = tmp_path / "tagger"
    finetune(load_config(TINY / "tag_ner.yaml", [f"out_dir={t}", "train.epochs=1", "task.crf=true",
                                                 "train.progress=false"], cls=FinetuneConfig))
    out = tmp_path / "s"
    code = main(["distill", str(TINY / "distill_classify.yaml"), f"teacher={t / 'best'}", f"out_dir={out}",
                 "data.train=pkg:quickstart/ner_train.txt", "data.dev=pkg:quickstart/ner_dev.txt",
                 "train.max_steps=3", "train.epochs=0", "train.early_stopping.metric=val_f1"])
    assert code == 0
    student = zerolm.load(out)
    assert student.model.crf is not None and len(student.model.body.blocks) == 1
    assert student.predict(["Ada Lovelace visited London"])[0]["tags"]
    # which parameters each loss trains: with soft targets the label loss reaches only the CRF
    # transitions; on the labels alone (kd_baseline) it trains the emissions and the body too
    from zerolm.config import DistillLossConfig
    from zerolm.distill.objective import Distilled, DistillObjective

    teacher = zerolm.load(t / "best")
    batch = next(iter(teacher.task.labelled_batches("pkg:quickstart/ner_dev.txt", seed=0, batch_size=4,
                                                    max_length=32).eval_batches(1)))
    def grads(hard: float, soft: float) -> tuple[torch.Tensor, torch.Tensor]:
        w = DistillLossConfig(hard=hard, soft=soft)
        model = Distilled(zerolm.load(out).model, "tag", w, [0], teacher.model.config.d_model)
        t_out = DistillObjective(teacher.model, teacher.task, "tag", w).teacher_outputs(batch)
        loss, _ = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        word_ids=batch.get("word_ids"), teacher=t_out)
        loss.backward()
        body = model.student.body.blocks[0].mlp.fc_in.weight.grad
        return (torch.zeros(1) if body is None else body.clone()), model.crf.transitions.grad

    body_both, trans_both = grads(1.0, 1.0)
    body_soft, trans_soft = grads(0.0, 1.0)
    body_hard, trans_hard = grads(1.0, 0.0)
    assert torch.allclose(body_both, body_soft, atol=1e-7)  # the labels do not reach the body
    assert trans_both.abs().sum() > 0 and (trans_soft is None or trans_soft.abs().sum() == 0)
    assert body_hard.abs().sum() > 0 and trans_hard.abs().sum() > 0  # labels alone: all of it learns


def test_a_causal_lm_distils_with_chunked_soft_targets(tmp_path):
    from zerolm.train.pretrain import pretrain

    t = pretrain(load_config(TINY / "gpt_char.yaml", [f"out_dir={tmp_path / 't'}", "train.max_steps=20",
                                                      "train.progress=false"]))
    result, report = distill(load_config(TINY / "distill_classify.yaml", [
        f"teacher={t.out_dir / 'final'}", f"out_dir={tmp_path / 's'}", "data.train=pkg:quickstart/corpus.txt",
        "data.dev=pkg:quickstart/corpus.txt", "data.max_length=32", "distill.attention=0", "distill.hidden=0",
        "train.max_steps=4", "train.epochs=0", "train.eval_every=2", "train.eval_batches=2",
        "train.early_stopping.metric=val_loss", "train.early_stopping.mode=min", "train.keep_final=true",
        "train.progress=false"], cls=DistillConfig))
    rows = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any("soft_loss" in r and torch.isfinite(torch.tensor(r["soft_loss"])) for r in rows)
    lm = zerolm.load(tmp_path / "s" / "final")
    assert len(lm.generate(["The "], max_new_tokens=5, greedy=True)[0]) == 5
    # a plain GPT student exports to Hugging Face with the same logits
    transformers = pytest.importorskip("transformers")
    assert main(["convert", "--to", "hf", str(tmp_path / "s" / "final"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([lm.tokenizer.encode("To be, or not")])
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - lm.model.eval()(ids)).abs().max() <= 1e-5


def test_general_then_task_distillation_chain_with_kd_baseline(teacher, tmp_path, caplog):
    """TinyBERT's two stages in one config: a narrower student (other head count, MiniLMv2
    relations) learns the teacher's hidden states on unlabelled text, then the task starts
    from that student; kd_baseline trains the same start on the labels alone."""
    out = tmp_path / "chain"
    over = ["student.d_model=16", "student.n_heads=2", "student.init=random", "distill.attention=0",
            "distill.minilm=1", "distill.relation_heads=4", "train.max_steps=4", "train.epochs=0",
            "kd_baseline=true", "general.data.train=[pkg:quickstart/corpus.txt]", "general.data.block_size=24",
            "general.train.max_steps=6", "general.train.eval_every=3", "general.train.batch_size=8",
            "general.train.progress=false", "general.distill.attention=0", "general.distill.minilm=1",
            "general.distill.relation_heads=4"]
    with caplog.at_level("INFO", logger="zerolm.train.distill"):
        result, report = distill(cfg(teacher, out, *over))
    g_rows = [json.loads(x) for x in (out / "general" / "metrics.jsonl").read_text().splitlines()]
    assert {"hidden_loss", "embedding_loss", "minilm_loss"} <= {k for r in g_rows for k in r}
    assert not any("hard_loss" in r or "soft_loss" in r for r in g_rows)  # unlabelled text: no task losses
    assert (out / "general" / "best" / "model.safetensors").exists()
    assert report["general"]["steps"] == 6
    # the task stage started from the general student, not from a random one
    starts = [r.getMessage() for r in caplog.records if "student 1 layers" in r.getMessage()]
    assert len(starts) == 3 and "random initialisation" in starts[0]  # general, task, kd_baseline
    assert all(f"weights of {out / 'general' / 'best'}" in m for m in starts[1:])
    saved = json.loads((out / "distill.json").read_text())
    assert saved["kd_baseline"]["accuracy"] == pytest.approx(report["kd_baseline"]["accuracy"])
    assert saved["gain_over_kd_baseline"] == pytest.approx(saved["student"]["accuracy"]
                                                           - saved["kd_baseline"]["accuracy"])
    b_rows = [json.loads(x) for x in (out / "kd_baseline" / "metrics.jsonl").read_text().splitlines()]
    assert any("hard_loss" in r for r in b_rows) and not any("soft_loss" in r for r in b_rows)
    assert zerolm.load(out / "kd_baseline").model.config.d_model == 16
    # a resume finds every stage ended and runs none again
    before = {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in (out, out / "general", out / "kd_baseline")}
    again, report2 = distill(cfg(teacher, out, *over), resume=True)
    assert {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in before} == before
    assert report2["student"] == report["student"] and report2["kd_baseline"] == report["kd_baseline"]
    # a stage that never started (a crash just before it) runs on --resume, the others do not
    import shutil

    shutil.rmtree(out / "kd_baseline")
    again, report3 = distill(cfg(teacher, out, *over), resume=True)
    assert (out / "kd_baseline" / "best").is_dir() and report3["student"] == report["student"]
    assert {p: (p / "metrics.jsonl").stat().st_mtime_ns for p in (out, out / "general")} == {
        p: before[p] for p in (out, out / "general")}


def test_an_interrupted_general_stage_resumes_and_the_task_stage_follows(teacher, tmp_path):
    from zerolm.train.loop import Trainer

    out = tmp_path / "r"
    over = ["general.data.train=[pkg:quickstart/corpus.txt]", "general.train.max_steps=4",
            "general.train.save_every=2", "general.train.progress=false", "train.max_steps=2", "train.epochs=0"]
    original_fit = Trainer.fit

    def stop_after_two(self):  # the general stage is interrupted at step 2, as Ctrl-C would
        if self.out_dir.name == "general":
            self.callbacks.append(lambda tr, step, row: tr.request_stop() if step == 2 else None)
        return original_fit(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", stop_after_two)
        result, report = distill(cfg(teacher, out, *over))
    assert result.interrupted and report["general"]["steps"] == 2 and not (out / "best").exists()
    result, report = distill(cfg(teacher, out, *over), resume=True)
    assert report["general"]["steps"] == 4 and (out / "best" / "model.safetensors").exists()
    steps = [json.loads(x)["step"] for x in (out / "general" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4


def test_general_distillation_alone_and_its_config_errors(teacher, tmp_path):
    out = tmp_path / "g"
    result, report = distill(cfg(teacher, out, "data.train=", "data.dev=", "general.data.train=[pkg:quickstart/corpus.txt]",
                                 "general.train.max_steps=2", "general.train.progress=false"))
    assert report == {"general": report["general"]} and result.step == 2
    assert json.loads((out / "distill.json").read_text())["general"]["steps"] == 2
    # the general student is a plain BERT: Hugging Face takes it with the same hidden states
    transformers = pytest.importorskip("transformers")
    assert main(["convert", "--to", "hf", str(out / "general" / "best"), str(tmp_path / "hf")]) == 0
    hf = transformers.BertModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False).eval()
    ours = zerolm.load(out / "general" / "best").model.eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        assert (hf(input_ids=ids).last_hidden_state - ours.body(ids).last_hidden_state).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="general distillation reads unlabelled text"):
        cfg(teacher, tmp_path / "x", "general.data.train=[pkg:quickstart/corpus.txt]", "general.train.max_steps=2",
            "general.distill.soft=1")
    with pytest.raises(ConfigError, match="relation_heads=3 does not divide"):
        distill(cfg(teacher, tmp_path / "y", "distill.minilm=1", "distill.relation_heads=3", "distill.attention=0",
                    "train.max_steps=1"))


def test_teacher_embeddings_init_projects_onto_the_principal_directions():
    import dataclasses

    from zerolm.distill.student import initialise
    from zerolm.models import ModelConfig, build_model

    torch.manual_seed(0)
    t_cfg = ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_seq_len=16)
    teacher = build_model(t_cfg)
    student = build_model(dataclasses.replace(t_cfg, d_model=8, n_heads=2, n_layers=1))
    note = initialise(student, teacher, "teacher_embeddings")
    assert "projected to 8 of 32 dimensions" in note
    w = teacher.body.tok_emb.weight.detach()
    _, _, vh = torch.linalg.svd(w - w.mean(0), full_matrices=False)
    assert torch.allclose(student.body.tok_emb.weight, w @ vh[:8].T, atol=1e-5)
    assert torch.allclose(student.body.pos_emb.weight, teacher.body.pos_emb.weight.detach() @ vh[:8].T, atol=1e-5)
    same = build_model(dataclasses.replace(t_cfg, n_layers=1))
    initialise(same, teacher, "teacher_embeddings")
    assert torch.equal(same.body.tok_emb.weight, teacher.body.tok_emb.weight)
    assert not torch.equal(same.body.blocks[0].attn.q_proj.weight, teacher.body.blocks[0].attn.q_proj.weight)


def test_a_student_can_start_from_a_fine_tuned_model_of_the_task_head_and_all(teacher, tmp_path, caplog):
    first = tmp_path / "first"
    distill(cfg(teacher, first, "train.max_steps=2", "train.epochs=0"))
    with caplog.at_level("INFO", logger="zerolm.train.distill"):
        distill(cfg(teacher, tmp_path / "second", f"student.init={first / 'best'}", "train.max_steps=1",
                    "train.epochs=0"))
    assert any(f"weights of {first / 'best'} (with its task head)" in r.getMessage() for r in caplog.records)
    # a model of another task is refused, naming both
    tagger = tmp_path / "tagger"
    finetune(load_config(TINY / "tag_ner.yaml", [f"out_dir={tagger}", "train.max_steps=1", "train.epochs=0",
                                                 "train.progress=false"], cls=FinetuneConfig))
    with pytest.raises(ConfigError, match="it is fine-tuned for tag"):
        distill(cfg(teacher, tmp_path / "third", f"student.init={tagger / 'best'}"))


def test_teacher_pruned_init_at_full_size_is_the_teacher_and_narrower_keeps_whole_heads(teacher, tmp_path):
    from zerolm.distill.student import initialise, make_student

    pred = zerolm.load(teacher)
    data = pred.task.labelled_batches("pkg:quickstart/reviews_dev.tsv", seed=0, batch_size=8, max_length=32)
    sample = [data.batch(i, 0) for i in range(2)]
    b = sample[0]
    c = pred.model.config
    # the same shape: every channel, head and neuron kept, so the student is the teacher
    same, _, how = make_student(pred, {"n_layers": c.n_layers}, "teacher_pruned", None, sample)
    with torch.no_grad():
        want = pred.model.eval()(b["input_ids"], attention_mask=b["attention_mask"])
        got = same.eval()(b["input_ids"], attention_mask=b["attention_mask"])
    assert torch.allclose(got, want, atol=1e-5) and "teacher pruned" in how
    # half the width and heads (same head size), fewer neurons: runs, and refuses another head size
    half, _, _ = make_student(pred, {"d_model": c.d_model // 2, "n_heads": c.n_heads // 2, "d_ff": c.d_ff // 2},
                              "teacher_pruned", None, sample)
    with torch.no_grad():
        assert torch.isfinite(half.eval()(b["input_ids"], attention_mask=b["attention_mask"])).all()
    other = make_student(pred, {"d_model": c.d_model // 2, "n_heads": c.n_heads}, "random")[0]
    with pytest.raises(ValueError, match="keeps whole heads"):
        initialise(other, pred.model, "teacher_pruned", None, sample)
    with pytest.raises(ValueError, match="needs sample batches"):
        initialise(half, pred.model, "teacher_pruned", None, None)
    # end to end: a general stage from the pruned teacher
    result, report = distill(cfg(teacher, tmp_path / "p", f"student.d_model={c.d_model // 2}",
                                 f"student.n_heads={c.n_heads // 2}", "student.init=teacher_pruned",
                                 "distill.attention=0", "train.max_steps=2", "train.epochs=0",
                                 "general.data.train=[pkg:quickstart/corpus.txt]", "general.train.max_steps=2",
                                 "general.train.progress=false", "general.distill.attention=0"))
    assert report["general"]["steps"] == 2 and report["student"]["accuracy"] >= 0


def test_a_joint_intent_slot_model_distils_with_kd_baseline(tmp_path):
    t = tmp_path / "joint"
    finetune(load_config(TINY / "intent_slots.yaml", [f"out_dir={t}", "train.epochs=2", "task.crf=true",
                                                      "train.progress=false", "train.threads=1"],
                         cls=FinetuneConfig))
    out = tmp_path / "s"
    code = main(["distill", str(TINY / "distill_classify.yaml"), f"teacher={t / 'best'}", f"out_dir={out}",
                 "data.train=pkg:quickstart/slu_train.txt", "data.dev=pkg:quickstart/slu_dev.txt",
                 "train.max_steps=4", "train.epochs=0", "train.early_stopping.metric=val_frame_accuracy",
                 "kd_baseline=true", "train.threads=1"])
    assert code == 0
    report = json.loads((out / "distill.json").read_text())
    assert report["metric"] == "frame_accuracy"
    assert {"frame_accuracy", "intent_accuracy", "slot_f1"} <= set(report["student"]) & set(report["kd_baseline"])
    student = zerolm.load(out)
    assert student.model.crf is not None and len(student.model.body.blocks) == 1
    pred = student.predict(["what is the weather in ashby cross tomorrow"])[0]
    assert pred["intent"] and len(pred["tags"]) == 8
    # the soft targets of both heads reach the student: zero weights on the labels still train both
    from zerolm.config import DistillLossConfig
    from zerolm.distill.objective import Distilled, DistillObjective

    teacher = zerolm.load(t / "best")
    batch = next(iter(teacher.task.labelled_batches("pkg:quickstart/slu_dev.txt", seed=0, batch_size=4,
                                                    max_length=32).eval_batches(1)))
    w = DistillLossConfig(hard=0.0, soft=1.0)
    model = Distilled(zerolm.load(out).model, "intent_slots", w, [0], teacher.model.config.d_model)
    t_out = DistillObjective(teacher.model, teacher.task, "intent_slots", w).teacher_outputs(batch)
    loss, parts = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        word_ids=batch["word_ids"], intent_labels=batch["intent_labels"], teacher=t_out)
    loss.backward()
    head = model.student.classifier
    assert head["intent"].weight.grad.abs().sum() > 0 and head["slot"].weight.grad.abs().sum() > 0
