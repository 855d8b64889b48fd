"""Distillation from a DistillConfig: load the teacher (anything `zerolm.load` takes),
build the student (the teacher's task on a smaller body, initialised from teacher layers
or otherwise), read the data in the teacher's format, and train the student with the one
loop under the distillation objective (zerolm.distill). The student is saved as an
ordinary fine-tuned model (best/ with task.json): every command loads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from zerolm.atomic import atomic_write_text
from zerolm.config import (
    ConfigError,
    DistillConfig,
    check_writable_dir,
    dump_config,
    resolve_finetune_steps,
)
from zerolm.modeldir import TASK_FILE
from zerolm.train import dist
from zerolm.train.loop import Trainer, TrainResult
from zerolm.train.rundir import open_run_dir

log = logging.getLogger(__name__)


def distill(cfg: DistillConfig, *, resume: bool | str = False, overwrite: bool = False
            ) -> tuple[TrainResult, dict]:
    """Distil as configured; returns the loop's result and the report (student vs teacher)."""
    device = dist.setup(cfg.train.device)
    if dist.is_main():
        check_writable_dir(cfg.out_dir)
    with open_run_dir(cfg.out_dir, resume=resume, overwrite=overwrite):
        return _distill(cfg, device, resume)


def _data(cfg: DistillConfig, teacher, kind: str, micro: int):
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


def _distill(cfg: DistillConfig, device, resume) -> tuple[TrainResult, dict]:
    from zerolm.distill.losses import layer_map
    from zerolm.distill.objective import Distilled, DistillObjective
    from zerolm.distill.student import make_student
    from zerolm.loading import load
    from zerolm.models import body_of, family

    teacher = load(cfg.teacher, device=device)
    kind = teacher.meta.get("task") if teacher.meta else (
        "clm" if family(teacher.model.config).objective == "clm" else None)
    if kind is None or teacher.task is None:
        raise ConfigError(f"teacher {cfg.teacher}: distillation needs a fine-tuned model (a run's best/) or a "
                          "causal LM; this one has no task head")
    if teacher.tokenizer is None:
        raise ConfigError(f"teacher {cfg.teacher}: no tokenizer beside the weights")
    torch.manual_seed(cfg.train.seed)
    try:
        student, task, how = make_student(teacher, dataclasses.asdict(cfg.student), cfg.student.init,
                                          cfg.student.layers)
        t_body, s_body = body_of(teacher.model), body_of(student)
        lmap = layer_map(len(s_body.blocks), len(t_body.blocks), cfg.distill.layer_map)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    w = cfg.distill
    if (w.attention or w.minilm) and s_body.config.n_heads != t_body.config.n_heads:
        raise ConfigError(f"distill.attention / distill.minilm compare attention maps head by head: the "
                          f"student has {s_body.config.n_heads} heads, the teacher {t_body.config.n_heads} "
                          f"(set student.n_heads={t_body.config.n_heads})")
    log.info("student: %d layers, d_model %d, %d heads (%s); teacher: %d layers, d_model %d; layer map %s",
             s_body.config.n_layers, s_body.config.d_model, s_body.config.n_heads, how,
             t_body.config.n_layers, t_body.config.d_model, lmap)
    tr = cfg.train
    micro = tr.grad_accum * dist.world_size()
    train_data, dev_data = _data(cfg, teacher, kind, micro)
    steps_per_epoch = train_data.steps_per_epoch() if hasattr(train_data, "steps_per_epoch") else 0
    if steps_per_epoch:
        steps, why = resolve_finetune_steps(tr, steps_per_epoch)
        log.info("run length: %s", why)
    else:  # text windows have no epochs
        steps = tr.max_steps
    tr = dataclasses.replace(tr, max_steps=steps)
    cfg = dataclasses.replace(cfg, train=tr)
    model = Distilled(student, kind, w, lmap, t_body.config.d_model)
    objective = DistillObjective(teacher.model, task, kind, w)
    meta = {**teacher.meta, "strategy": {"name": "full"}, "distilled_from": str(cfg.teacher)} if teacher.meta else None
    out = Path(cfg.out_dir)
    trainer = Trainer(model, objective, train_data, val_data=dev_data, train=tr, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=out, config_text=dump_config(cfg), tokenizer=teacher.tokenizer,
                      device=device, saved_model=student,
                      extra_files={TASK_FILE: json.dumps(meta, indent=2)} if meta else None)
    if resume:
        trainer.resume(None if resume is True else resume)
    result = trainer.fit()
    report: dict = {}
    if dist.is_main():
        report = _report(cfg, teacher, student, task, dev_data, result, out)
    return result, report


def _report(cfg, teacher, student, task, dev_data, result, out: Path) -> dict:
    """Teacher vs student on dev: the headline metric, parameters, size on disk and
    latency (distill.json and distill.png)."""
    from zerolm.distill.report import compare, dir_size, plot
    from zerolm.loading import resolve_model_path
    from zerolm.modeldir import load_weights
    from zerolm.tasks.base import scalars

    best = out / "best" / "model.safetensors"
    if best.exists():
        load_weights(student, best)
    with torch.no_grad():
        s_rep = task.evaluate(student.eval(), dev_data.eval_batches())
        t_rep = task.evaluate(teacher.model.eval(), dev_data.eval_batches())
    metric = getattr(task, "metric", "loss")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    report = {"student": scalars(s_rep), "teacher": scalars(t_rep), "metric": metric,
              "student_params": n(student), "teacher_params": n(teacher.model),
              "retention": (s_rep.get(metric, 0.0) / t_rep[metric]) if t_rep.get(metric) else None,
              "steps": result.step, "wall_s": result.wall_s, "train_s": result.train_s,
              "teacher_path": str(cfg.teacher)}
    first = next(iter(dev_data.eval_batches(1)))
    report["latency"] = compare(teacher.model, student, first, repeats=cfg.distill.latency_repeats)
    report["student_bytes"] = dir_size(out / "best") if (out / "best").is_dir() else None
    report["teacher_bytes"] = dir_size(resolve_model_path(cfg.teacher))
    atomic_write_text(out / "distill.json", json.dumps(report, indent=2))
    try:
        plot(report, out / "distill.png")
    except Exception as e:  # a plot must never cost the run
        log.warning("could not draw distill.png: %s", e)
    return report
