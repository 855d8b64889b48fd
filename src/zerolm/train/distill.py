"""Distillation from a DistillConfig, in up to three stages, each a run of the one loop:

1. general (optional, TinyBERT's first stage): the student learns a pretrained teacher's
   hidden states and attention on unlabelled text, in OUT_DIR/general;
2. task: the student (the teacher's task on a smaller body, initialised from teacher
   layers, from the general stage, or otherwise) learns the fine-tuned teacher's outputs
   and the labels, in OUT_DIR; it is saved as an ordinary fine-tuned model (best/ with
   task.json), so every command loads it;
3. kd_baseline (optional): the same student, same initialisation and budget, on the
   labels alone, in OUT_DIR/kd_baseline, so that the report measures what distillation
   added.

A stage that finished is not run again when the run resumes; an interrupted one resumes
from its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from zerolm.atomic import atomic_write_text
from zerolm.config import (
    INTERMEDIATE_LOSSES,
    ConfigError,
    DistillConfig,
    DistillLossConfig,
    check_writable_dir,
    dump_config,
    resolve_finetune_steps,
)
from zerolm.modeldir import TASK_FILE
from zerolm.train import dist
from zerolm.train.loop import Trainer, TrainResult
from zerolm.train.rundir import open_run_dir, read_run_state

log = logging.getLogger(__name__)

GENERAL, BASELINE = "general", "kd_baseline"  # stage directories inside OUT_DIR
REPORT = "distill.json"
LATENCY_BATCH = 32  # the larger of the two batch sizes the report times (the other is 1)


def distill(cfg: DistillConfig, *, resume: bool | str = False, overwrite: bool = False
            ) -> tuple[TrainResult, dict]:
    """Distil as configured; returns the last stage's loop result and the report (student
    vs teacher, and vs kd_baseline when trained)."""
    device = dist.setup(cfg.train.device)
    if dist.is_main():
        check_writable_dir(cfg.out_dir)
    with open_run_dir(cfg.out_dir, resume=resume, overwrite=overwrite, stages=(GENERAL, BASELINE)):
        return _distill(cfg, device, resume)


def _distill(cfg: DistillConfig, device, resume) -> tuple[TrainResult, dict]:
    from zerolm.loading import load

    out = Path(cfg.out_dir)
    teacher = load(cfg.teacher, device=device)
    if teacher.tokenizer is None:
        raise ConfigError(f"teacher {cfg.teacher}: no tokenizer beside the weights")
    init = cfg.student.init
    general = None
    if cfg.general.enabled:
        g_result, general = _general_stage(cfg, teacher, device, resume, out / GENERAL)
        init = str(_model_dir(out / GENERAL))
        if g_result.interrupted or not cfg.has_task_stage:  # interrupted: --resume continues it
            report = {"general": general}
            if dist.is_main():
                atomic_write_text(out / REPORT, json.dumps(report, indent=2))
            return g_result, report
    result, student, task, dev_data = _task_stage(cfg, teacher, device, resume, out, init)
    if result.interrupted:
        return result, {"general": general} if general else {}
    baseline = None
    if cfg.kd_baseline:
        labels_only = DistillLossConfig(**{**dataclasses.asdict(cfg.distill), "hard": 1.0, "soft": 0.0,
                                           "embedding": 0.0, "hidden": 0.0, "attention": 0.0, "minilm": 0.0})
        b_cfg = dataclasses.replace(cfg, distill=labels_only, out_dir=str(out / BASELINE), kd_baseline=False)
        b_result, b_student, _, _ = _task_stage(b_cfg, teacher, device, bool(resume), out / BASELINE, init)
        if b_result.interrupted:
            return b_result, {"general": general} if general else {}
        baseline = (b_result, b_student)
    report: dict = {}
    if dist.is_main():
        report = _report(cfg, teacher, student, task, dev_data, result, out, baseline, general)
    return result, report


# ------------------------------------------------------------------------------ stages
def _stage_state(run_dir: Path) -> dict | None:
    """run.json of a stage that ended (finished or stopped early) with its model saved; None
    when the stage still has to run or to resume."""
    state = read_run_state(run_dir)
    if state and state.get("status") != "interrupted" and _model_dir(run_dir).is_dir():
        return state
    return None


def _model_dir(run_dir: Path) -> Path:
    """best/ (the best evaluation), else final/."""
    return run_dir / "best" if (run_dir / "best").is_dir() else run_dir / "final"


def _result_of(state: dict, run_dir: Path) -> TrainResult:
    """A finished stage's result, as run.json recorded it (the stage is not run again)."""
    return TrainResult(state["step"], state["status"] == "stopped_early", state.get("best_metric"), {}, run_dir,
                       state.get("wall_s", 0.0), state.get("tokens", 0), best_step=state.get("best_step"),
                       train_s=state.get("train_s", 0.0))


def _fit(trainer: Trainer, run_dir: Path, resume, done: dict | None) -> TrainResult:
    if done is not None:
        log.info("%s: this stage already ended (%s at step %d); not run again", run_dir, done["status"],
                 done["step"])
        return _result_of(done, run_dir)
    if resume and (run_dir / "checkpoints").is_dir():
        trainer.resume(None if resume is True else resume)
    return trainer.fit()


def _check_pair(s_body, t_body, w: DistillLossConfig, key: str) -> None:
    """Attention maps compare head by head; relation heads must divide both widths."""
    same_heads = (w.attention or (w.minilm and not w.relation_heads))
    if same_heads and s_body.config.n_heads != t_body.config.n_heads:
        raise ConfigError(f"{key}.attention / {key}.minilm compare attention maps head by head: the student has "
                          f"{s_body.config.n_heads} heads, the teacher {t_body.config.n_heads} (set "
                          f"student.n_heads={t_body.config.n_heads}, or use {key}.minilm with "
                          f"{key}.relation_heads, which needs no equal head count)")
    if w.minilm and w.relation_heads:
        for who, body in (("student", s_body), ("teacher", t_body)):
            width = body.blocks[-1].attn.q_proj.out_features
            if width % w.relation_heads:
                raise ConfigError(f"{key}.relation_heads={w.relation_heads} does not divide the {who}'s attention "
                                  f"width {width}: choose a common divisor of both widths")


def _general_stage(cfg: DistillConfig, task_teacher, device, resume, run_dir: Path) -> tuple[TrainResult, dict]:
    """TinyBERT's general distillation: intermediate losses on unlabelled text."""
    from zerolm.distill.losses import layer_map
    from zerolm.distill.objective import Distilled, DistillObjective
    from zerolm.distill.student import INITS, initialise, student_config
    from zerolm.loading import load, load_model
    from zerolm.models import body_of, build_model, family

    g = cfg.general
    teacher = load(g.teacher, device=device) if g.teacher else task_teacher
    tok = teacher.tokenizer or task_teacher.tokenizer
    if tok.vocab_size != task_teacher.tokenizer.vocab_size:
        raise ConfigError(f"general.teacher {g.teacher}: its vocabulary ({tok.vocab_size}) is not the task "
                          f"teacher's ({task_teacher.tokenizer.vocab_size}); both stages must share the tokenizer")
    t_body = body_of(teacher.model)
    train_data, dev_data = _text_batches(g, tok, t_body.config, family(t_body.config).objective == "clm")
    torch.manual_seed(g.train.seed)
    s = cfg.student
    try:
        if s.init in INITS:
            student = build_model(student_config(t_body.config, dataclasses.asdict(s)))
            how = initialise(student, teacher.model, s.init, s.layers, _sample(train_data))
        else:
            student, _ = load_model(s.init)
            how = f"weights of {s.init}"
        s_body = body_of(student)
        lmap = layer_map(len(s_body.blocks), len(t_body.blocks), g.distill.layer_map)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_pair(s_body, t_body, g.distill, "general.distill")
    log.info("general distillation: student %d layers, d_model %d, %d heads (%s); teacher %s: %d layers, "
             "d_model %d; layer map %s", s_body.config.n_layers, s_body.config.d_model, s_body.config.n_heads,
             how, g.teacher or cfg.teacher, t_body.config.n_layers, t_body.config.d_model, lmap)
    model = Distilled(student, "general", g.distill, lmap, t_body.config.d_model)
    objective = DistillObjective(teacher.model, None, "general", g.distill)
    trainer = Trainer(model, objective, train_data, val_data=dev_data, train=g.train, optim=g.optim,
                      schedule=g.schedule, out_dir=run_dir, config_text=dump_config(cfg), tokenizer=tok,
                      device=device, saved_model=student)
    # --resume-from names a checkpoint of the task stage: this stage resumes from its newest
    result = _fit(trainer, run_dir, bool(resume), _stage_state(run_dir) if resume else None)
    summary = {"teacher": g.teacher or str(cfg.teacher), "steps": result.step, "best_val_loss": result.best_metric,
               "wall_s": result.wall_s, "train_s": result.train_s, "student": str(_model_dir(run_dir))}
    return result, summary


def _sample(train_data, n: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first training batches: what student.init teacher_pruned ranks activations on."""
    return [train_data.batch(i, 0) for i in range(n)]


def _text_batches(g, tok, t_config, causal: bool):
    """(train, dev) inputs of general distillation: sentences for an encoder, windows of
    the token stream for a causal LM."""
    from zerolm.data.corpus import load_corpus
    from zerolm.data.lm import CausalLMBatches, SentenceBatches

    keep = tok.kind != "wordpiece"
    corpus = load_corpus(g.data.train, tok, keep_line_ends=keep, cache_dir=g.data.cache_dir)
    if g.data.val:
        train, dev = corpus, load_corpus(g.data.val, tok, keep_line_ends=keep, cache_dir=g.data.cache_dir)
    else:
        train, dev = corpus.split_lines(g.data.val_fraction)
    block = min(g.data.block_size, t_config.max_seq_len)
    tr = g.train
    try:
        if causal:
            return (CausalLMBatches(train.flat(), block, tr.batch_size, tr.seed),
                    CausalLMBatches(dev.flat(), block, tr.batch_size, tr.seed))
        micro = tr.grad_accum * dist.world_size()
        return (SentenceBatches(train, tok, block, tr.batch_size, tr.seed, micro),
                SentenceBatches(dev, tok, block, tr.batch_size, tr.seed))
    except ValueError as e:
        raise ConfigError(f"general.data: {e}") from None


def _task_data(cfg: DistillConfig, teacher, micro: int):
    """(train, dev) batches in the teacher's format."""
    tr = cfg.train
    if teacher.meta:  # a fine-tuned teacher: its task reads its own format, with its labels
        kw = {"batch_size": tr.batch_size, "max_length": cfg.data.max_length}
        return (teacher.task.labelled_batches(cfg.data.train, seed=tr.seed, micro_per_step=micro, **kw),
                teacher.task.labelled_batches(cfg.data.dev, seed=tr.seed, **kw))
    # a pretrained causal LM: text, in windows of data.max_length tokens
    from zerolm.data.corpus import load_corpus
    from zerolm.data.lm import CausalLMBatches

    tok = teacher.tokenizer
    keep = tok.kind != "wordpiece"
    train = load_corpus([cfg.data.train], tok, keep_line_ends=keep).flat()
    dev = load_corpus([cfg.data.dev], tok, keep_line_ends=keep).flat()
    block = min(cfg.data.max_length, teacher.model.config.max_seq_len)
    return CausalLMBatches(train, block, tr.batch_size, tr.seed), CausalLMBatches(dev, block, tr.batch_size, tr.seed)


def _task_stage(cfg: DistillConfig, teacher, device, resume, out: Path, init: str):
    """Task distillation (or, with the labels alone, kd_baseline) into `out`; returns
    (loop result, student, task, dev batches)."""
    from zerolm.distill.losses import layer_map
    from zerolm.distill.objective import Distilled, DistillObjective
    from zerolm.distill.student import make_student
    from zerolm.models import body_of, family

    kind = teacher.meta.get("task") if teacher.meta else (
        "clm" if family(teacher.model.config).objective == "clm" else None)
    if kind is None or teacher.task is None:
        raise ConfigError(f"teacher {cfg.teacher}: task distillation needs a fine-tuned model (a run's best/) or "
                          "a causal LM; this one has no task head (for general distillation alone, set "
                          "general.data.train and leave data.train empty)")
    if kind not in ("classify", "tag", "intent_slots", "clm", "seq2seq"):
        raise ConfigError(f"teacher {cfg.teacher}: task distillation covers classifiers, taggers, joint intent "
                          f"+ slot models, causal LMs and seq2seq models, not task {kind!r}")
    if kind == "seq2seq":
        extra = [k for k in INTERMEDIATE_LOSSES if getattr(cfg.distill, k)]
        if extra:
            raise ConfigError(f"distill.{extra[0]}: a seq2seq student learns the teacher's target-token "
                              "distributions (distill.soft) and the labels (distill.hard); the intermediate "
                              "losses compare encoder layers and are not implemented for encoder-decoders")
    tr = cfg.train
    micro = tr.grad_accum * dist.world_size()
    train_data, dev_data = _task_data(cfg, teacher, micro)
    torch.manual_seed(cfg.train.seed)  # the same initialisation for the student and kd_baseline
    try:
        student, _, how = make_student(teacher, dataclasses.asdict(cfg.student), init, cfg.student.layers,
                                       _sample(train_data))
        # the teacher's task scores the student: it made the batches, and a task may learn from
        # them (labels of the dev file unseen in training get their ids there)
        task = teacher.task
        t_body, s_body = body_of(teacher.model), body_of(student)
        lmap = layer_map(len(s_body.blocks), len(t_body.blocks), cfg.distill.layer_map)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    w = cfg.distill
    _check_pair(s_body, t_body, w, "distill")
    log.info("%s: student %d layers, d_model %d, %d heads (%s); teacher: %d layers, d_model %d; layer map %s",
             "kd_baseline (labels only)" if out.name == BASELINE else "task distillation", s_body.config.n_layers,
             s_body.config.d_model, s_body.config.n_heads, how, t_body.config.n_layers, t_body.config.d_model, lmap)
    steps_per_epoch = train_data.steps_per_epoch() if hasattr(train_data, "steps_per_epoch") else 0
    if steps_per_epoch:
        steps, why = resolve_finetune_steps(tr, steps_per_epoch)
        log.info("run length: %s", why)
    else:  # text windows have no epochs
        steps = tr.max_steps
    tr = dataclasses.replace(tr, max_steps=steps)
    cfg = dataclasses.replace(cfg, train=tr)
    model = Distilled(student, kind, w, lmap, t_body.config.d_model,
                      (getattr(task, "intent_weight", 1.0), getattr(task, "slot_weight", 1.0)),
                      getattr(task, "label_smoothing", 0.0))
    objective = DistillObjective(teacher.model, task, kind, w)
    meta = {**teacher.meta, "strategy": {"name": "full"}, "distilled_from": str(cfg.teacher)} if teacher.meta else None
    trainer = Trainer(model, objective, train_data, val_data=dev_data, train=tr, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=out, config_text=dump_config(cfg), tokenizer=teacher.tokenizer,
                      device=device, saved_model=student,
                      extra_files={TASK_FILE: json.dumps(meta, indent=2)} if meta else None)
    result = _fit(trainer, out, resume, _stage_state(out) if resume else None)
    return result, student, task, dev_data


# ------------------------------------------------------------------------------ report
def _greedy_targets(task):
    """run(model, batch) for the latency report of a seq2seq task: greedy targets."""
    from zerolm.generate import generate_seq2seq

    cfg = task.generation_config(num_beams=1)
    tok = task.tokenizer

    def run(model, batch):
        return generate_seq2seq(model, batch["input_ids"], cfg, attention_mask=batch.get("attention_mask"),
                                eos_id=tok.eos_id, pad_id=tok.pad_id or 0)

    return run


def _report(cfg, teacher, student, task, dev_data, result, out: Path, baseline, general) -> dict:
    """Teacher vs student (and kd_baseline) on dev: the headline metric, parameters, size
    on disk and latency (distill.json and distill.png)."""
    from zerolm.distill.report import compare, dir_size, plot
    from zerolm.loading import resolve_model_path
    from zerolm.modeldir import load_weights
    from zerolm.tasks.base import scalars

    def dev_report(model, run_dir: Path) -> dict[str, Any]:
        weights = _model_dir(run_dir) / "model.safetensors"
        if weights.exists():
            load_weights(model, weights)
        with torch.no_grad():
            return scalars(task.evaluate(model.eval(), dev_data.eval_batches()))

    s_rep = dev_report(student, out)
    with torch.no_grad():
        t_rep = scalars(task.evaluate(teacher.model.eval(), dev_data.eval_batches()))
    metric = getattr(task, "metric", "loss")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    report: dict[str, Any] = {
        "student": s_rep, "teacher": t_rep, "metric": metric,
        "student_params": n(student), "teacher_params": n(teacher.model),
        "retention": (s_rep.get(metric, 0.0) / t_rep[metric]) if t_rep.get(metric) else None,
        "steps": result.step, "wall_s": result.wall_s, "train_s": result.train_s,
        "teacher_path": str(cfg.teacher)}
    if baseline is not None:
        b_result, b_student = baseline
        b_rep = dev_report(b_student, out / BASELINE)
        report["kd_baseline"] = b_rep
        report["kd_baseline_steps"] = b_result.step
        if metric in b_rep and metric in s_rep:
            report["gain_over_kd_baseline"] = s_rep[metric] - b_rep[metric]
    if general is not None:
        report["general"] = general
    # latency at batch 1 and at batch 32 (or the whole dev set when smaller): the first dev
    # batch in evaluation order, i.e. the longest inputs, the same for both models
    timed = copy.copy(dev_data)
    timed.batch_size = LATENCY_BATCH
    first = next(iter(timed.eval_batches(1)))
    if hasattr(task, "generation_config"):  # an encoder-decoder: the time to write the batch's targets (greedy)
        report["latency"] = compare(teacher.model, student, first, repeats=cfg.distill.latency_repeats,
                                    run=_greedy_targets(task))
        report["latency"]["what"] = "greedy decoding of the targets"
    else:
        report["latency"] = compare(teacher.model, student, first, repeats=cfg.distill.latency_repeats)
    report["student_bytes"] = dir_size(_model_dir(out)) if _model_dir(out).is_dir() else None
    report["teacher_bytes"] = dir_size(resolve_model_path(cfg.teacher))
    atomic_write_text(out / REPORT, json.dumps(report, indent=2))
    try:
        plot(report, out / "distill.png")
    except Exception as e:  # a plot must never cost the run
        log.warning("could not draw distill.png: %s", e)
    return report
