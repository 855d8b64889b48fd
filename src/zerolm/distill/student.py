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

from zerolm.models import ModelConfig, body_of, build_model, family

log = logging.getLogger(__name__)

SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "d_ff", "n_decoder_layers")
INITS = ("teacher_layers", "bottom", "teacher_embeddings", "teacher_pruned", "random")  # else a model directory


def student_config(teacher: ModelConfig, shape: dict[str, int]) -> ModelConfig:
    """The teacher's config with the student's shape (a 0 keeps the teacher's value);
    per-layer shapes and head sizes of the teacher are not carried over."""
    over = {k: v for k, v in shape.items() if k in SHAPE_KEYS and v}
    encoder_decoder = family(teacher).encoder_decoder
    if over.get("n_decoder_layers") and not encoder_decoder:
        raise ValueError(f"student.n_decoder_layers: the teacher ({teacher.family}) has no decoder stack")
    if encoder_decoder:  # 0: as many decoder blocks as the student's encoder has
        over.setdefault("n_decoder_layers", over.get("n_layers", teacher.n_layers))
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


def initialise(student: nn.Module, teacher: nn.Module, how: str, layers: list[int] | None = None,
               sample: list[dict[str, torch.Tensor]] | None = None) -> str:
    """Copy teacher weights into the student (in place) and say what was copied.

    `how`: "teacher_layers" (embeddings, the chosen blocks, the final norm, the task head),
    "bottom" (the same with the bottom blocks), "teacher_embeddings" (the embedding tables
    alone, projected onto their principal directions when the student is narrower; any
    width), "teacher_pruned" (the chosen blocks cut down to the student's width, heads and
    FFN width by the activations they carry on `sample` batches, as Minitron prunes), or
    "random" (nothing).
    """
    if how == "random":
        return "random initialisation"
    s_body, t_body = body_of(student), body_of(teacher)
    if how == "teacher_embeddings":
        return _embeddings_from(s_body, t_body)
    if how == "teacher_pruned":
        return _pruned_from(student, teacher, layers, sample)
    Ls, Lt = len(s_body.blocks), len(t_body.blocks)
    if s_body.config.d_model != t_body.config.d_model:
        raise ValueError(f"student.init {how!r} copies teacher weights, which needs the teacher's width "
                         f"(d_model {t_body.config.d_model}, student {s_body.config.d_model}); use "
                         "student.init=random with a narrower student")
    # an encoder-decoder's decoder stack chooses its blocks the same way, among its own
    s_dec, t_dec = getattr(s_body, "decoder", None), getattr(t_body, "decoder", None)
    Ls_dec, Lt_dec = (len(s_dec.blocks), len(t_dec.blocks)) if s_dec is not None else (0, 0)
    if how == "bottom":
        chosen, chosen_dec = list(range(Ls)), list(range(Ls_dec))
    elif how == "teacher_layers":
        chosen = _chosen_layers(layers, Ls, Lt)
        chosen_dec = default_layers(Ls_dec, Lt_dec) if Ls_dec else []
    else:
        raise ValueError(f"student.init must be teacher_layers, bottom, teacher_embeddings, teacher_pruned, random "
                         f"or a model directory, got {how!r}")
    if len(chosen_dec) != Ls_dec or Ls_dec > Lt_dec:
        raise ValueError(f"student.init {how}: the student's decoder has {Ls_dec} blocks, the teacher's {Lt_dec}; "
                         "a student copies no more blocks than the teacher has (set student.n_decoder_layers "
                         f"to at most {Lt_dec})")
    t_sd = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for name, p in student.state_dict().items():
            src = name
            parts = name.split(".")
            if "blocks" in parts:  # body.blocks.i.* <- body.blocks.chosen[i].* (decoder.blocks: chosen_dec)
                k = parts.index("blocks")
                pick = chosen_dec if k and parts[k - 1] == "decoder" else chosen
                parts[k + 1] = str(pick[int(parts[k + 1])])
                src = ".".join(parts)
            if src in t_sd and t_sd[src].shape == p.shape:
                p.copy_(t_sd[src])
                copied += 1
    return f"{copied} tensors from the teacher (blocks {chosen}" + (f", decoder blocks {chosen_dec})" if s_dec
                                                                     is not None else ")")


def _chosen_layers(layers: list[int] | None, Ls: int, Lt: int) -> list[int]:
    chosen = list(layers) if layers else default_layers(Ls, Lt)
    if len(chosen) != Ls or any(not 0 <= i < Lt for i in chosen):
        raise ValueError(f"student.layers {chosen}: need {Ls} teacher block indices in 0..{Lt - 1}")
    return chosen


@torch.no_grad()
def _importance(t_body: nn.Module, sample: list[dict[str, torch.Tensor]]):
    """Activation importance on sample batches (Minitron, Muralidharan et al. 2024): per
    residual channel the mean square over every layer's output; per head the norm of its
    context vectors; per FFN neuron the mean magnitude of its activation; real tokens only.
    Returns (channels (D,), [heads (H,)] per block, [neurons (F,)] per block)."""
    blocks = t_body.blocks
    heads = [torch.zeros(b.attn.n_heads) for b in blocks]
    neurons = [torch.zeros(b.mlp.fc_out.in_features) for b in blocks]
    channels = torch.zeros(t_body.config.d_model)
    keep: dict[str, torch.Tensor] = {}

    def on_heads(i):
        def hook(module, args):
            x = args[0].float()  # (B, T, H * Dh)
            h = x.view(*x.shape[:2], heads[i].numel(), -1).norm(dim=-1)  # (B, T, H)
            heads[i] += (h * keep["m"][..., None]).sum((0, 1))
        return hook

    def on_neurons(i):
        def hook(module, args):
            neurons[i] += (args[0].float().abs() * keep["m"][..., None]).sum((0, 1))  # (F,)
        return hook

    hooks = [b.attn.o_proj.register_forward_pre_hook(on_heads(i)) for i, b in enumerate(blocks)]
    hooks += [b.mlp.fc_out.register_forward_pre_hook(on_neurons(i)) for i, b in enumerate(blocks)]
    was_training = t_body.training
    t_body.eval()
    try:
        for batch in sample:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            keep["m"] = (mask if mask is not None else torch.ones_like(ids)).float()  # (B, T)
            out = t_body(ids, attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
                         output_hidden_states=True)
            for h in out.hidden_states:  # (B, T, D) each
                channels += (h.float() ** 2 * keep["m"][..., None]).sum((0, 1))
    finally:
        for h in hooks:
            h.remove()
        t_body.train(was_training)
    return channels, heads, neurons


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order."""
    return torch.topk(scores, k).indices.sort().values


@torch.no_grad()
def _pruned_from(student: nn.Module, teacher: nn.Module, layers: list[int] | None,
                 sample: list[dict[str, torch.Tensor]] | None) -> str:
    """The student as the teacher structurally pruned to its shape: the chosen blocks, the
    most active residual channels (everywhere: embeddings, norms, every linear that reads or
    writes the residual stream, pooler and heads), and in each block the most active heads
    and FFN neurons. Head size must match: heads are kept or dropped whole."""
    if not sample:
        raise ValueError("student.init teacher_pruned ranks channels, heads and neurons by their activations: "
                         "it needs sample batches of the training data")
    if getattr(body_of(teacher), "decoder", None) is not None:
        raise ValueError("student.init teacher_pruned covers encoders and decoder-only models; for an "
                         "encoder-decoder use teacher_layers, bottom, teacher_embeddings or random")
    s_body, t_body = body_of(student), body_of(teacher)
    sc, tc = s_body.config, t_body.config
    Ls, Lt = len(s_body.blocks), len(t_body.blocks)
    chosen = _chosen_layers(layers, Ls, Lt)
    for i, j in enumerate(chosen):
        s_attn, t_attn = s_body.blocks[i].attn, t_body.blocks[j].attn
        if s_attn.head_dim != t_attn.head_dim or s_attn.n_heads > t_attn.n_heads:
            raise ValueError(f"student.init teacher_pruned keeps whole heads: student block {i} has {s_attn.n_heads} "
                             f"heads of {s_attn.head_dim}, teacher block {j} {t_attn.n_heads} of {t_attn.head_dim} "
                             f"(choose student.n_heads = student.d_model / {t_attn.head_dim}, at most "
                             f"{t_attn.n_heads})")
        if s_body.blocks[i].mlp.fc_out.in_features > t_body.blocks[j].mlp.fc_out.in_features:
            raise ValueError("student.init teacher_pruned: the student's FFN is wider than the teacher's")
    if sc.d_model > tc.d_model:
        raise ValueError(f"student.init teacher_pruned: the student (d_model {sc.d_model}) is wider than the teacher")
    channels, heads, neurons = _importance(t_body, sample)
    ch = _top(channels, sc.d_model)
    Dt, Ds = tc.d_model, sc.d_model
    keep_rows: dict[int, torch.Tensor] = {}  # student block -> kept rows of q/k/v (whole heads)
    keep_neurons: dict[int, torch.Tensor] = {}
    for i, j in enumerate(chosen):
        n_h, dh = s_body.blocks[i].attn.n_heads, s_body.blocks[i].attn.head_dim
        hs = _top(heads[j], n_h)
        keep_rows[i] = (hs[:, None] * dh + torch.arange(dh)).flatten()
        keep_neurons[i] = _top(neurons[j], s_body.blocks[i].mlp.fc_out.in_features)

    def indices(name: str, p: torch.Tensor, q: torch.Tensor) -> list[torch.Tensor | None]:
        parts = name.split(".")
        if "blocks" in parts:
            i = int(parts[parts.index("blocks") + 1])
            tail = ".".join(parts[parts.index("blocks") + 2:])
            rows, neur = keep_rows[i], keep_neurons[i]
            table = {"attn.q_proj.weight": [rows, ch], "attn.k_proj.weight": [rows, ch],
                     "attn.v_proj.weight": [rows, ch], "attn.q_proj.bias": [rows], "attn.k_proj.bias": [rows],
                     "attn.v_proj.bias": [rows], "attn.o_proj.weight": [ch, rows], "mlp.fc_in.weight": [neur, ch],
                     "mlp.fc_in.bias": [neur], "mlp.fc_out.weight": [ch, neur]}
            if tail in table:
                return table[tail]
        # anything else: every dimension of the teacher's width that is the student's width
        # in the student reads or writes the residual stream
        return [ch if (q.shape[d] == Dt and p.shape[d] == Ds) else None for d in range(q.dim())]

    t_sd = teacher.state_dict()
    copied = 0
    for name, p in student.state_dict().items():
        parts = name.split(".")
        if "blocks" in parts:
            k = parts.index("blocks")
            parts[k + 1] = str(chosen[int(parts[k + 1])])
        q = t_sd.get(".".join(parts))
        if q is None or q.dim() != p.dim():
            continue
        for d, idx in enumerate(indices(name, p, q)):
            if idx is not None:
                q = q.index_select(d, idx)
        if q.shape == p.shape:
            p.copy_(q)
            copied += 1
    return (f"the teacher pruned to the student's shape: blocks {chosen}, {Ds} of {Dt} channels, heads and FFN "
            f"neurons by activation on {len(sample)} batches ({copied} tensors)")


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


def make_student(teacher, shape: dict[str, int], init: str, layers: list[int] | None = None,
                 sample: list[dict[str, torch.Tensor]] | None = None):
    """(student task model, its task, what initialised it) for a loaded teacher (a
    zerolm.loading.Predictor): the teacher's task rebuilt on a smaller body."""
    from zerolm.loading import load_model
    from zerolm.tasks import finetune_task

    t_model = teacher.model
    cfg = student_config(t_model.config, shape)
    from_dir = init not in INITS
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
    how = f"weights of {init}" if from_dir else initialise(student, t_model, init, layers, sample)
    return student, task, how
