"""A student for a teacher: the teacher's architecture with fewer or narrower layers, its
task head and tokenizer, initialised from chosen teacher layers (DistilBERT takes every
other one), from the bottom ones, at random, or from another pretrained model.

Shape letters: L layers (Ls student, Lt teacher), D width.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from zerolm.models import ModelConfig, body_of, build_model

log = logging.getLogger(__name__)

SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "d_ff")


def student_config(teacher: ModelConfig, shape: dict[str, int]) -> ModelConfig:
    """The teacher's config with the student's shape (a 0 keeps the teacher's value);
    per-layer shapes and head sizes of the teacher are not carried over."""
    over = {k: v for k, v in shape.items() if k in SHAPE_KEYS and v}
    cfg = dataclasses.replace(teacher, layers=[], head_dim=0, **over)
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"student.d_model {cfg.d_model} is not divisible by student.n_heads {cfg.n_heads}")
    return cfg


def default_layers(n_student: int, n_teacher: int) -> list[int]:
    """Evenly spaced teacher blocks, bottom and top included when there is room (every
    other one for half the depth, as DistilBERT)."""
    if n_student == 1:
        return [0]
    step = (n_teacher - 1) / (n_student - 1)
    return sorted({round(i * step) for i in range(n_student)}) if n_student <= n_teacher else []


def initialise(student: nn.Module, teacher: nn.Module, how: str, layers: list[int] | None = None) -> str:
    """Copy teacher weights into the student (in place) and say what was copied.

    `how`: "teacher_layers" (embeddings, the chosen blocks, the final norm, the task head),
    "bottom" (the same with the bottom blocks), "teacher_embeddings" (the embedding tables
    alone, projected onto their principal directions when the student is narrower; any
    width), or "random" (nothing).
    """
    if how == "random":
        return "random initialisation"
    s_body, t_body = body_of(student), body_of(teacher)
    if how == "teacher_embeddings":
        return _embeddings_from(s_body, t_body)
    Ls, Lt = len(s_body.blocks), len(t_body.blocks)
    if s_body.config.d_model != t_body.config.d_model:
        raise ValueError(f"student.init {how!r} copies teacher weights, which needs the teacher's width "
                         f"(d_model {t_body.config.d_model}, student {s_body.config.d_model}); use "
                         "student.init=random with a narrower student")
    if how == "bottom":
        chosen = list(range(Ls))
    elif how == "teacher_layers":
        chosen = list(layers) if layers else default_layers(Ls, Lt)
    else:
        raise ValueError(f"student.init must be teacher_layers, bottom, teacher_embeddings, random or a model "
                         f"directory, got {how!r}")
    if len(chosen) != Ls or any(not 0 <= i < Lt for i in chosen):
        raise ValueError(f"student.layers {chosen}: need {Ls} teacher block indices in 0..{Lt - 1}")
    t_sd = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for name, p in student.state_dict().items():
            src = name
            parts = name.split(".")
            if "blocks" in parts:  # body.blocks.i.* <- body.blocks.chosen[i].*
                k = parts.index("blocks")
                parts[k + 1] = str(chosen[int(parts[k + 1])])
                src = ".".join(parts)
            if src in t_sd and t_sd[src].shape == p.shape:
                p.copy_(t_sd[src])
                copied += 1
    return f"{copied} tensors from the teacher (blocks {chosen})"


EMBEDDINGS = ("tok_emb", "pos_emb", "type_emb")


@torch.no_grad()
def _embeddings_from(s_body: nn.Module, t_body: nn.Module) -> str:
    """The teacher's token, position and type embeddings in the student: as they are at
    the same width; when the student is narrower, each table times P, the top Ds principal
    directions (right singular vectors) of the centred token table (Dt, Ds), so the student
    starts with the most of the teacher's word geometry that Ds dimensions hold."""
    Ds = s_body.config.d_model
    tok = t_body.tok_emb.weight.float()  # (V, Dt)
    P = None
    if tok.shape[1] != Ds:
        if Ds > tok.shape[1]:
            raise ValueError(f"student.init teacher_embeddings: the student (d_model {Ds}) is wider than the "
                             f"teacher ({tok.shape[1]}); a projection can only narrow")
        _, S, Vh = torch.linalg.svd(tok - tok.mean(0), full_matrices=False)
        P = Vh[:Ds].T  # (Dt, Ds)
        kept = float((S[:Ds] ** 2).sum() / (S ** 2).sum())
    copied = []
    for name in EMBEDDINGS:
        src, dst = getattr(t_body, name, None), getattr(s_body, name, None)
        if src is None or dst is None or src.weight.shape[0] != dst.weight.shape[0]:
            continue
        w = src.weight.float()
        dst.weight.copy_((w @ P if P is not None else w).to(dst.weight.dtype))
        copied.append(name)
    if P is None:
        return f"teacher embeddings ({', '.join(copied)}); blocks random"
    return (f"teacher embeddings ({', '.join(copied)}) projected to {Ds} of {tok.shape[1]} dimensions "
            f"({100 * kept:.1f}% of the token table's variance); blocks random")


def _fine_tuned_like(init: str, teacher):
    """The model at `init` loaded whole when it is fine-tuned for the teacher's task with the
    teacher's labels and tokenizer; None when it is a pretrained model (a body to put the
    task on). Another task or other labels is an error."""
    from pathlib import Path

    from zerolm.loading import load, read_task_meta, resolve_model_path

    path = resolve_model_path(init)
    meta = read_task_meta(Path(path)) if Path(path).is_dir() else None
    if meta is None or not teacher.meta:
        return None
    if meta.get("task") != teacher.meta.get("task") or meta.get("labels") != teacher.meta.get("labels"):
        raise ValueError(f"student.init {init}: it is fine-tuned for {meta.get('task')} with labels "
                         f"{meta.get('labels')}, the teacher for {teacher.meta.get('task')} with labels "
                         f"{teacher.meta.get('labels')}; start from a model of the teacher's task or a pretrained one")
    pred = load(path)
    if pred.tokenizer is not None and teacher.tokenizer is not None \
            and pred.tokenizer.vocab_size != teacher.tokenizer.vocab_size:
        raise ValueError(f"student.init {init}: its vocabulary ({pred.tokenizer.vocab_size}) is not the teacher's "
                         f"({teacher.tokenizer.vocab_size}); teacher and student must share the tokenizer")
    return pred


def make_student(teacher, shape: dict[str, int], init: str, layers: list[int] | None = None):
    """(student task model, its task, what initialised it) for a loaded teacher (a
    zerolm.loading.Predictor): the teacher's task rebuilt on a smaller body."""
    from zerolm.loading import load_model
    from zerolm.tasks import finetune_task

    t_model = teacher.model
    cfg = student_config(t_model.config, shape)
    from_dir = init not in ("teacher_layers", "bottom", "teacher_embeddings", "random")
    if from_dir:
        whole = _fine_tuned_like(init, teacher)
        if whole is not None:  # a model of the teacher's task (a pruned or earlier student): head and all
            return whole.model, whole.task, f"weights of {init} (with its task head)"
        base, tok = load_model(init)
        if tok is not None and teacher.tokenizer is not None and tok.vocab_size != teacher.tokenizer.vocab_size:
            raise ValueError(f"student.init {init}: its vocabulary ({tok.vocab_size}) is not the teacher's "
                             f"({teacher.tokenizer.vocab_size}); teacher and student must share the tokenizer")
        cfg = base.config
    else:
        base = build_model(cfg)
    if teacher.meta:
        student, task = finetune_task(teacher.meta["task"]).from_meta(teacher.meta, base, teacher.tokenizer)
    else:  # a pretrained teacher: the student keeps the pretraining heads
        student, task = base, teacher.task
    how = f"weights of {init}" if from_dir else initialise(student, t_model, init, layers)
    return student, task, how
