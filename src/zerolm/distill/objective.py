"""Knowledge distillation as an objective of the one training loop.

A frozen teacher (in inference mode, no gradients) runs on each batch; the student runs
inside `Distilled.forward`, with the modules only distillation trains (width
projections) beside it, so that data parallelism sees every trained parameter used in
forward. The loss is a weighted sum of any subset of:

- `hard`: the task's own loss on the labels;
- `soft`: the teacher's output distribution at temperature T as targets (Hinton et al.
  2015): classes, per-word tags, or, for a causal LM and an encoder-decoder's target
  tokens (word-level KD, Kim & Rush 2016), next tokens over the vocabulary in chunks
  (never the (B, T, V) logits of either model);
- `embedding`, `hidden`, `attention`: TinyBERT's embedding-output, hidden-state (through a
  learned projection when the widths differ) and attention-map MSE, student layer i
  against teacher layer `layer_map[i]`;
- `minilm`: MiniLM's last-layer attention distributions and value relations (KL), which
  need no projection; with `relation_heads` > 0, MiniLMv2's query, key and value relations
  split into that many relation heads, which need the same head count on neither side.

The kind "general" is TinyBERT's general distillation: unlabelled text, no task head,
intermediate losses only.

A CRF student trains its emissions on the teacher's (soft) and its transitions on the
labels (hard, through emissions it does not move), as the task distillation of taggers
with a CRF usually does. Only the student is saved (`Distilled.student`).

Shape letters: B batch, T tokens, D width, C classes, V vocabulary, L layers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zerolm.distill.losses import (
    attention_mse,
    chunked_lm_kl,
    hidden_mse,
    minilm_relation_loss,
    relation_kl,
    soft_target_loss,
    split_values,
)
from zerolm.models import body_of
from zerolm.models.heads import IGNORE_INDEX, word_loss_sum
from zerolm.models.losses import linear_cross_entropy
from zerolm.tasks.base import device_of, to_device

INTERMEDIATE = ("embedding", "hidden", "attention", "minilm")


def _needs(w) -> tuple[bool, bool]:
    """(hidden states, attention maps) the weighted losses read."""
    return bool(w.embedding or w.hidden), bool(w.attention or (w.minilm and not w.relation_heads))


def _projections(w) -> tuple[str, ...]:
    """The last block's attention projections the MiniLM losses read (caught by hooks)."""
    if not w.minilm:
        return ()
    return ("q_proj", "k_proj", "v_proj") if w.relation_heads else ("v_proj",)


def needs_teacher(w) -> bool:
    """Whether any weighted loss reads the teacher (a labels-only run does not)."""
    return any(getattr(w, k) for k in ("soft", *INTERMEDIATE))


@contextmanager
def _captured(body, names: tuple[str, ...]):
    """{name: output} of the named projections of the body's last attention block, filled
    by forward hooks while the `with` block runs."""
    out: dict[str, torch.Tensor] = {}
    attn = body.blocks[-1].attn
    hooks = [getattr(attn, n).register_forward_hook(lambda m, i, o, n=n: out.setdefault(n, o)) for n in names]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


def _minilm(w, body, s_out, s_proj: dict, teacher: dict, mask) -> torch.Tensor:
    if w.relation_heads:  # MiniLMv2: Q-Q, K-K and V-V relations, summed as in the paper
        return sum(relation_kl(s_proj[n], teacher["projections"][n], w.relation_heads, mask)
                   for n in ("q_proj", "k_proj", "v_proj"))
    s_v = split_values(s_proj["v_proj"], body.blocks[-1].attn.n_heads)
    return minilm_relation_loss(s_out.attentions[-1], teacher["attentions"][-1], s_v, teacher["values"], mask=mask)


class Distilled(nn.Module):
    """The student, the projections distillation trains with it, and the student's side
    of the loss (in forward). Without `teacher`, forward is the student's own."""

    def __init__(self, student: nn.Module, kind: str, weights, layer_map: list[int], teacher_width: int,
                 task_weights: tuple[float, float] = (1.0, 1.0), label_smoothing: float = 0.0):
        super().__init__()
        self.student = student
        self.task_weights = task_weights  # intent_slots: (intent, slot) weights of the task's loss
        self.label_smoothing = label_smoothing  # seq2seq: the task's, in the hard loss
        self.config = student.config
        self.kind, self.w, self.layer_map = kind, weights, list(layer_map)
        Ds, L = student.config.d_model, student.config.n_layers
        self.proj = None
        if Ds != teacher_width and (weights.embedding or weights.hidden):
            # TinyBERT's W_h: one per compared layer (the embedding output is layer 0)
            self.proj = nn.ModuleList(nn.Linear(Ds, teacher_width) for _ in range(L + 1))

    @property
    def crf(self):
        return getattr(self.student, "crf", None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, labels=None, word_ids=None,
                intent_labels=None, teacher: dict[str, Any] | None = None):
        if teacher is None:
            return self.student(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if self.kind == "seq2seq":
            return self._seq2seq(input_ids, attention_mask, labels, teacher)
        body, w = body_of(self.student), self.w
        need_h, need_a = _needs(w)
        with _captured(body, _projections(w)) as proj:
            out = body(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       output_hidden_states=need_h, output_attentions=need_a)
        h = out.last_hidden_state  # (B, T, D)
        losses: dict[str, torch.Tensor] = {}
        T = w.temperature
        if self.kind == "general":
            pass  # text alone: the intermediate losses below
        elif self.kind == "classify":
            logits = self.student.head(h, attention_mask).float()  # (B, C)
            if w.hard:
                losses["hard"] = F.cross_entropy(logits, labels)
            if w.soft:
                losses["soft"] = soft_target_loss(logits, teacher["logits"], temperature=T, kind=w.divergence)
        elif self.kind == "tag":
            scores = self.student.head(h, attention_mask).float()  # (B, T, C)
            crf = self.crf
            if w.hard:  # with soft targets, a CRF learns its transitions from the labels and its emissions
                # from the teacher; on the labels alone (kd_baseline) the labels train both
                frozen = crf is not None and bool(w.soft)
                total, n = word_loss_sum(scores.detach() if frozen else scores, labels, word_ids, crf)
                losses["hard"] = total / max(n, 1)
            if w.soft:
                losses["soft"] = soft_target_loss(scores, teacher["logits"], temperature=T, kind=w.divergence,
                                                  mask=labels != IGNORE_INDEX)
        elif self.kind == "intent_slots":  # both heads, each as its own task distils, weighted as the task
            intent, slots = (x.float() for x in self.student.head(h, attention_mask))  # (B, I), (B, T, C)
            iw, sw = self.task_weights
            if w.hard:  # as for tagging: with soft targets a CRF learns its transitions alone
                frozen = self.crf is not None and bool(w.soft)
                total, n = word_loss_sum(slots.detach() if frozen else slots, labels, word_ids, self.crf)
                losses["hard"] = (iw * F.cross_entropy(intent, intent_labels, ignore_index=IGNORE_INDEX)
                                  + sw * total / max(n, 1))
            if w.soft:
                t_intent, t_slots = teacher["logits"]
                losses["soft"] = (iw * soft_target_loss(intent, t_intent, temperature=T, kind=w.divergence)
                                  + sw * soft_target_loss(slots, t_slots, temperature=T, kind=w.divergence,
                                                          mask=labels != IGNORE_INDEX))
        else:  # a causal LM: next tokens, the loss computed in vocabulary chunks
            head = self.student.lm_head.weight  # (V, D)
            if w.hard:
                losses["hard"] = linear_cross_entropy(h.flatten(0, 1), head, labels.flatten(), IGNORE_INDEX)
            if w.soft:
                losses["soft"] = chunked_lm_kl(h, head, teacher["hidden"], teacher["head_weight"], temperature=T,
                                               mask=labels != IGNORE_INDEX)
        mask = attention_mask
        if w.embedding:
            p = self.proj[0] if self.proj is not None else None
            losses["embedding"] = hidden_mse(out.hidden_states[0], teacher["hidden_states"][0], proj=p, mask=mask)
        if w.hidden:
            terms = [hidden_mse(out.hidden_states[i + 1], teacher["hidden_states"][j + 1],
                                proj=self.proj[i + 1] if self.proj is not None else None, mask=mask)
                     for i, j in enumerate(self.layer_map)]
            losses["hidden"] = torch.stack(terms).mean()
        if w.attention:
            terms = [attention_mse(out.attentions[i], teacher["attentions"][j], mask=mask)
                     for i, j in enumerate(self.layer_map)]
            losses["attention"] = torch.stack(terms).mean()
        if w.minilm:
            losses["minilm"] = _minilm(w, body, out, proj, teacher, mask)
        total = sum(getattr(w, k) * v for k, v in losses.items())
        return total, {f"{k}_loss": v.detach() for k, v in losses.items()}

    def _seq2seq(self, input_ids, attention_mask, labels, teacher: dict[str, Any]):
        """An encoder-decoder student on the target tokens (teacher forcing): the labels'
        cross-entropy with the task's label smoothing (hard) and the teacher's next-token
        distributions (soft)."""
        w, student = self.w, self.student
        h = student.head_input(student.decoder_states(input_ids, attention_mask, labels))  # (B, T, D)
        head = student.lm_head.weight  # (V, D)
        losses: dict[str, torch.Tensor] = {}
        if w.hard and self.label_smoothing > 0:  # as the task trains: smoothing needs every logit
            losses["hard"] = F.cross_entropy(F.linear(h, head).flatten(0, 1).float(), labels.flatten(),
                                             ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        elif w.hard:
            losses["hard"] = linear_cross_entropy(h.flatten(0, 1), head, labels.flatten(), IGNORE_INDEX)
        if w.soft:
            losses["soft"] = chunked_lm_kl(h, head, teacher["hidden"], teacher["head_weight"], temperature=w.temperature,
                                           mask=labels != IGNORE_INDEX)
        total = sum(getattr(w, k) * v for k, v in losses.items())
        return total, {f"{k}_loss": v.detach() for k, v in losses.items()}


class DistillObjective:
    """The loop's objective: the teacher's outputs (no gradients), then the student's loss."""

    name = "distill"

    def __init__(self, teacher: nn.Module, task, kind: str, weights):
        self.teacher = teacher.eval().requires_grad_(False)
        self.task, self.kind, self.w = task, kind, weights
        # general distillation mixes MSE and KL terms: its loss has no single unit
        self.loss_unit = task.loss_unit if kind != "general" else "weighted distillation loss"

    @torch.no_grad()
    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if not needs_teacher(self.w):  # the labels alone (kd_baseline): the teacher would idle
            return {}
        if self.kind == "seq2seq":  # the decoder's states on the target, as its LM head reads them
            t = self.teacher
            h = t.decoder_states(batch["input_ids"], batch.get("attention_mask"), batch["labels"])
            return {"hidden": t.head_input(h), "head_weight": t.lm_head.weight}
        body = body_of(self.teacher)
        need_h, need_a = _needs(self.w)
        with _captured(body, _projections(self.w)) as proj:
            out = body(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       token_type_ids=batch.get("token_type_ids"), output_hidden_states=need_h,
                       output_attentions=need_a)
        t: dict[str, Any] = {"hidden_states": out.hidden_states, "attentions": out.attentions,
                             "projections": proj}
        if self.kind == "clm":
            t.update(hidden=out.last_hidden_state, head_weight=self.teacher.lm_head.weight)
        elif self.kind != "general" and self.w.soft:
            logits = self.teacher.head(out.last_hidden_state, batch.get("attention_mask"))
            # a joint model has two heads: (intent logits, slot scores)
            t["logits"] = tuple(x.float() for x in logits) if isinstance(logits, tuple) else logits.float()
        if self.w.minilm and not self.w.relation_heads:
            t["values"] = split_values(proj["v_proj"], body.blocks[-1].attn.n_heads)
        return t

    def loss(self, model, batch):
        if device_of(self.teacher) != batch["input_ids"].device:
            self.teacher.to(batch["input_ids"].device)
        t = self.teacher_outputs(batch)
        return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids"), labels=batch.get("labels"),
                     word_ids=batch.get("word_ids"), intent_labels=batch.get("intent_labels"), teacher=t)

    def evaluate(self, model, batches) -> dict[str, Any]:
        """The task's report on the student alone; for general distillation (no task), the
        distillation losses on the held-out text, averaged over its batches."""
        model = getattr(model, "module", model)
        student = model.student
        if self.kind != "general":
            return self.task.evaluate(student, (to_device(b, device_of(student)) for b in batches))
        sums: dict[str, float] = {}
        n = 0
        for b in batches:
            loss, parts = self.loss(model, to_device(b, device_of(student)))
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}
