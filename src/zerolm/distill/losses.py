"""Loss kernels of knowledge distillation: pure functions of student and teacher tensors.

- Soft targets: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network"
  (2015), also computed straight from hidden states and LM-head weights for large
  vocabularies (`chunked_lm_kl`);
- hidden states, embedding outputs and attention maps: Jiao et al., "TinyBERT: Distilling
  BERT for Natural Language Understanding" (2020), with `layer_map` for which teacher layer
  each student layer learns from;
- last-layer attention distributions and value relations: Wang et al., "MiniLM: Deep
  Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers"
  (2020).

Every loss returns a scalar: the mean over the valid rows chosen by an optional mask
(1 = real token, 0 = padding); it is computed in fp32 (fp64 inputs stay fp64) and treats
every teacher tensor as a constant target, which no gradient reaches.

Shape letters: N rows, B batch, T tokens (queries), S keys, C classes, V vocabulary,
D width (Ds student, Dt teacher), H heads, Dh head size (of the student or the teacher).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

Divergence = Literal["kl", "reverse_kl", "js"]
# which teacher layer each student layer learns from: a rule, or one teacher index per student layer
LayerMap = Literal["uniform", "last"] | Sequence[int]

# Rows per chunk in `chunked_lm_kl` are chosen so that one (rows, V) buffer holds about this
# many floats (16 MB in fp32); a chunk keeps about five such buffers alive (both models'
# log-probabilities and their temporaries), so memory stays flat for any vocabulary.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- helpers
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # fp32 even for bf16 / fp16 inputs (a softmax over a wide vocabulary); fp64 stays fp64
    # so that gradcheck can test the kernels
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor,
             p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities, with 0 * log 0 = 0."""
    p = log_p.exp() if p is None else p
    # where p = 0 (a -inf logit, an underflow, a masked key) the term is 0 whatever log q
    # is; selecting before multiplying keeps NaN (-inf - -inf) out of value and gradient
    diff = torch.where(p > 0, log_p - log_q, 0.0)
    return (p * diff).sum(-1)


def _kl_rows_of_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from probabilities (p is the constant target)."""
    # a student probability that underflowed to 0 would make the loss inf and the gradient
    # NaN; clamped, the term is large and finite (-log of the smallest normal float ~ 87)
    log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
    return _kl_rows(torch.log(p), log_q, p)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the entries where `keep` (broadcast to values) is true; 0 when
    none is (with a gradient of zeros, so every parameter still takes part in backward)."""
    if keep is None:
        return values.sum() / max(values.numel(), 1)
    keep = keep.bool().expand_as(values)
    # a masked-out entry may hold inf or NaN (a padded row): select it away, never multiply
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)


def _row_mask(mask: torch.Tensor | None, shape: torch.Size, where: str) -> torch.Tensor | None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}, expected {tuple(shape)} "
                         "(one entry per row or position: 1 = real token, 0 = padding)")
    return mask


def _query_key_masks(mask: torch.Tensor, B: int, T: int, S: int, where: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool (B, T) real queries and (B, S) real keys from a (B, S) mask.

    The queries are the last T of the S key positions (as in the body's attention, where a
    prefix or a KV cache comes first); without one, S == T and the mask is (B, T).
    """
    if tuple(mask.shape) != (B, S):
        raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}, expected {(B, S)} "
                         "(batch, keys): the attention_mask the maps were computed with")
    keys = mask.bool()
    return keys[:, S - T:], keys


def _check_heads(where: str, student: torch.Tensor, teacher: torch.Tensor, same_last: bool) -> None:
    """(B, H, T, S or Dh) maps: heads must match in number, and every other dimension
    (all of them, or all but the last with `same_last=False`)."""
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{where}: expected (B, H, T, ...) tensors, got shapes "
                         f"{tuple(student.shape)} (student) and {tuple(teacher.shape)} (teacher)")
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(f"{where}: the student has {student.shape[1]} attention heads and the "
                         f"teacher {teacher.shape[1]}; distil between layers with the same number "
                         "of heads (or give the student as many heads as the teacher)")
    n = 4 if same_last else 3
    if student.shape[:n] != teacher.shape[:n]:
        raise ValueError(f"{where}: student shape {tuple(student.shape)} does not match teacher "
                         f"shape {tuple(teacher.shape)}")


# --------------------------------------------------------------------------- soft targets
def soft_target_loss(
    student_logits: torch.Tensor,  # (N, C) or (B, T, C)
    teacher_logits: torch.Tensor,  # same shape: the targets
    *,
    temperature: float = 1.0,
    kind: Divergence = "kl",
    mask: torch.Tensor | None = None,  # (N,) or (B, T): 1 = a row that counts
) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: a divergence between the teacher's and the
    student's softmax at temperature T, times T^2, averaged over the valid rows.

    `kind`: "kl" is KL(p_T || p_S) (the paper's; the student covers every mode of the
    teacher), "reverse_kl" is KL(p_S || p_T) (mode seeking), "js" the Jensen-Shannon
    divergence, the mean of KL(p_T || m) and KL(p_S || m) with m = (p_T + p_S) / 2
    (symmetric and bounded by log 2). The T^2 factor keeps the gradients' size as T
    changes (they scale as 1 / T^2 for every kind), so the weight of this loss against a
    hard-label loss need not be retuned with T.
    """
    if kind not in ("kl", "reverse_kl", "js"):
        raise ValueError(f"soft_target_loss: kind {kind!r} is not one of 'kl', 'reverse_kl', 'js'")
    if not temperature > 0:
        raise ValueError(f"soft_target_loss: temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"soft_target_loss: student logits {tuple(student_logits.shape)} and "
                         f"teacher logits {tuple(teacher_logits.shape)} differ in shape")
    mask = _row_mask(mask, student_logits.shape[:-1], "soft_target_loss")
    dtype = _compute_dtype(student_logits)
    with torch.autocast(student_logits.device.type, enabled=False):
        log_s = torch.log_softmax(student_logits.to(dtype) / temperature, -1)
        log_t = torch.log_softmax(teacher_logits.detach().to(dtype) / temperature, -1)
        if kind == "kl":
            rows = _kl_rows(log_t, log_s)
        elif kind == "reverse_kl":
            rows = _kl_rows(log_s, log_t)
        else:
            log_m = torch.logaddexp(log_t, log_s) - math.log(2.0)  # log of the mixture
            rows = 0.5 * (_kl_rows(log_t, log_m) + _kl_rows(log_s, log_m))
        return _masked_mean(rows, mask) * temperature ** 2


class _LinearKL(torch.autograd.Function):
    """T^2 * mean KL(softmax(h_t W_t^T / T) || softmax(h_s W_s^T / T)) in row chunks.

    Neither model's (N, V) logits exist at once: each chunk of rows forms both models'
    (rows, V) log-probabilities, adds its KL to the total and turns the student's
    probabilities, in place, into the gradient of the loss w.r.t. the student logits,
    T (p_s - p_t) / N, from which the gradients of h_s, W_s and b_s follow by matmuls.
    As in models.losses.linear_cross_entropy, the gradients are computed in the forward
    pass (one sweep instead of two) and only scaled in backward. The teacher is constant.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, temperature: float, chunk: int):
        need_w = ctx.needs_input_grad[1]
        need_b = b_s is not None and ctx.needs_input_grad[2]
        dtype = _compute_dtype(h_s)
        h_s_, w_s_, b_s_, h_t_, w_t_, b_t_ = (None if x is None else x.to(dtype)
                                              for x in (h_s, w_s, b_s, h_t, w_t, b_t))
        with torch.autocast(h_s.device.type, enabled=False):
            grad_h, grad_w, grad_b, loss = _linear_kl_fwd_bwd(
                h_s_, w_s_, b_s_, h_t_, w_t_, b_t_, temperature, chunk, need_w, need_b)
        ctx.save_for_backward(grad_h.to(h_s.dtype),
                              grad_w.to(w_s.dtype) if need_w else None,
                              grad_b.to(b_s.dtype) if need_b else None)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scaled = [None if g is None else g * grad_out for g in (grad_h, grad_w, grad_b)]
        return *scaled, None, None, None, None, None


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
            temperature: float) -> torch.Tensor:
    z = h @ w.t()  # (rows, V)
    if b is not None:
        z += b
    return z.div_(temperature)


def _linear_kl_fwd_bwd(h_s, w_s, b_s, h_t, w_t, b_t, temperature: float, chunk: int,
                       need_w: bool, need_b: bool):
    """(dL/dh_s (N, Ds), dL/dW_s (V, Ds) or None, dL/db_s (V,) or None, L)."""
    n = h_s.shape[0]
    total = torch.zeros((), dtype=h_s.dtype, device=h_s.device)
    grad_h = torch.empty_like(h_s)  # every row is written below
    grad_w = torch.zeros_like(w_s) if need_w else None
    grad_b = torch.zeros_like(b_s) if need_b else None
    # d(T^2 KL / n) / d(student logit) = T^2 * (p_s - p_t) / (T n): one factor of T cancels
    scale = temperature / max(n, 1)
    for s in range(0, n, chunk):
        hc = h_s[s:s + chunk]  # (C, Ds)
        log_t = torch.log_softmax(_logits(h_t[s:s + chunk], w_t, b_t, temperature), -1)  # (C, V)
        log_s = torch.log_softmax(_logits(hc, w_s, b_s, temperature), -1)  # (C, V)
        p_t = log_t.exp()
        total += _kl_rows(log_t, log_s, p_t).sum()
        g = log_s.exp_().sub_(p_t).mul_(scale)  # (C, V): dL/d(student logits), in place
        torch.mm(g, w_s, out=grad_h[s:s + chunk])
        if need_w:
            grad_w.addmm_(g.t(), hc)
        if need_b:
            grad_b += g.sum(0)
    return grad_h, grad_w, grad_b, total * (temperature ** 2 / max(n, 1))


def chunked_lm_kl(
    student_hidden: torch.Tensor,  # (N, Ds) or (B, T, Ds): what the student's LM head reads
    student_head_weight: torch.Tensor,  # (V, Ds)
    teacher_hidden: torch.Tensor,  # (N, Dt) or (B, T, Dt)
    teacher_head_weight: torch.Tensor,  # (V, Dt)
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,) or (B, T): 1 = a position that counts
    student_bias: torch.Tensor | None = None,  # (V,)
    teacher_bias: torch.Tensor | None = None,  # (V,)
    chunk: int | None = None,
) -> torch.Tensor:
    """The causal-LM soft-target loss, `soft_target_loss(h_s W_s^T + b_s, h_t W_t^T + b_t,
    temperature=T)` (KL(p_T || p_S) * T^2 over the valid positions), without the (B, T, V)
    logits of either model.

    At most `chunk` rows of V logits per model are alive at a time (default: about 16 MB
    of them); the student and teacher widths may differ, the vocabularies may not. The
    gradients w.r.t. the student's hidden states, head weight and bias are computed during
    the forward pass: call backward on the result once (or with retain_graph, as usual).
    For logits shifted for next-token prediction, pass hidden states shifted the same way.
    """
    V, Ds = student_head_weight.shape
    Dt = teacher_head_weight.shape[1]
    if teacher_head_weight.shape[0] != V:
        raise ValueError(f"chunked_lm_kl: the student's head has {V} vocabulary rows and the "
                         f"teacher's {teacher_head_weight.shape[0]}; both must share a vocabulary")
    if student_hidden.shape[-1] != Ds or teacher_hidden.shape[-1] != Dt:
        raise ValueError(f"chunked_lm_kl: hidden widths {student_hidden.shape[-1]} (student) and "
                         f"{teacher_hidden.shape[-1]} (teacher) do not match their head weights' "
                         f"{Ds} and {Dt}")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(f"chunked_lm_kl: student hidden {tuple(student_hidden.shape)} and teacher "
                         f"hidden {tuple(teacher_hidden.shape)} differ in their leading dimensions")
    for name, b in (("student_bias", student_bias), ("teacher_bias", teacher_bias)):
        if b is not None and tuple(b.shape) != (V,):
            raise ValueError(f"chunked_lm_kl: {name} has shape {tuple(b.shape)}, expected {(V,)}")
    if not temperature > 0:
        raise ValueError(f"chunked_lm_kl: temperature must be positive, got {temperature}")
    if chunk is None:
        chunk = max(16, _CHUNK_ELEMENTS // V)
    if chunk < 1:
        raise ValueError(f"chunked_lm_kl: chunk must be a positive number of rows, got {chunk}")
    mask = _row_mask(mask, student_hidden.shape[:-1], "chunked_lm_kl")
    h_s = student_hidden.reshape(-1, Ds)  # (N, Ds)
    h_t = teacher_hidden.detach().reshape(-1, Dt)  # (N, Dt)
    if mask is not None:
        # only valid rows enter the kernel (no work spent on padding); indexing is
        # differentiable, so the padded rows' gradient is the zeros autograd scatters back
        keep = mask.reshape(-1).bool()
        h_s, h_t = h_s[keep], h_t[keep]
    return _LinearKL.apply(h_s, student_head_weight, student_bias, h_t,
                           teacher_head_weight.detach(),
                           None if teacher_bias is None else teacher_bias.detach(),
                           float(temperature), int(chunk))


# --------------------------------------------------------------------------- TinyBERT
def hidden_mse(
    student_h: torch.Tensor,  # (B, T, Ds) or (N, Ds)
    teacher_h: torch.Tensor,  # (B, T, Dt) or (N, Dt)
    *,
    proj: Callable[[torch.Tensor], torch.Tensor] | None = None,  # Ds -> Dt, trained with it
    mask: torch.Tensor | None = None,  # (B, T) or (N,): 1 = a position that counts
) -> torch.Tensor:
    """TinyBERT's hidden-state (and embedding-output) loss: MSE(proj(h_s), h_t), averaged
    over the valid positions and the Dt features.

    When the widths differ, `proj` (an nn.Module such as nn.Linear(Ds, Dt), or any
    callable) maps student states into the teacher's space; it is trained with the
    student (TinyBERT's W_h), so include its parameters in the optimizer.
    """
    s = proj(student_h) if proj is not None else student_h
    if s.shape != teacher_h.shape:
        hint = ("; give proj= a map from the student's width to the teacher's, e.g. "
                f"nn.Linear({student_h.shape[-1]}, {teacher_h.shape[-1]})"
                if proj is None and s.shape[:-1] == teacher_h.shape[:-1] else "")
        raise ValueError(f"hidden_mse: student states {tuple(s.shape)}"
                         f"{' after proj' if proj is not None else ''} and teacher states "
                         f"{tuple(teacher_h.shape)} differ in shape{hint}")
    mask = _row_mask(mask, teacher_h.shape[:-1], "hidden_mse")
    dtype = _compute_dtype(s)
    per_position = (s.to(dtype) - teacher_h.detach().to(dtype)).pow(2).mean(-1)  # (B, T)
    return _masked_mean(per_position, mask)


def attention_mse(
    student_attn: torch.Tensor,  # (B, H, T, S) attention probabilities
    teacher_attn: torch.Tensor,  # (B, H, T, S)
    *,
    mask: torch.Tensor | None = None,  # (B, S) (S == T without prefix / cache): 1 = real token
) -> torch.Tensor:
    """TinyBERT's attention loss: MSE between the two models' attention maps of one layer,
    averaged over heads, real query rows and real key columns.

    TinyBERT compares the unnormalised scores q k^T / sqrt(Dh); we compare the
    probabilities, which `BodyOutput.attentions` holds, which are bounded (no scale
    mismatch between models) and in which padded keys hold exactly 0.
    """
    _check_heads("attention_mse", student_attn, teacher_attn, same_last=True)
    dtype = _compute_dtype(student_attn)
    sq = (student_attn.to(dtype) - teacher_attn.detach().to(dtype)).pow(2)  # (B, H, T, S)
    if mask is None:
        return _masked_mean(sq, None)
    B, _, T, S = sq.shape
    queries, keys = _query_key_masks(mask, B, T, S, "attention_mse")
    return _masked_mean(sq, queries[:, None, :, None] & keys[:, None, None, :])  # (B, 1, T, S)


# --------------------------------------------------------------------------- MiniLM
def attention_kl(
    student_attn: torch.Tensor,  # (B, H, T, S) attention probabilities (of the last layer)
    teacher_attn: torch.Tensor,  # (B, H, T, S)
    mask: torch.Tensor | None = None,  # (B, S) (S == T without prefix / cache): 1 = real token
) -> torch.Tensor:
    """MiniLM's self-attention distribution transfer: KL(A_teacher || A_student) of each
    head's attention row (a distribution over keys), averaged over heads and real queries.

    Padded key columns are left out (they hold probability 0 in maps computed with the
    same mask). A student probability of 0 where the teacher's is not counts as the
    smallest normal float instead (a large finite term, no NaN gradient).
    """
    _check_heads("attention_kl", student_attn, teacher_attn, same_last=True)
    dtype = _compute_dtype(student_attn)
    s, t = student_attn.to(dtype), teacher_attn.detach().to(dtype)
    if mask is None:
        return _masked_mean(_kl_rows_of_probs(t, s), None)
    B, _, T, S = s.shape
    queries, keys = _query_key_masks(mask, B, T, S, "attention_kl")
    t = t.masked_fill(~keys[:, None, None, :], 0.0)  # a padded key's term is 0 (0 log 0)
    return _masked_mean(_kl_rows_of_probs(t, s), queries[:, None, :])  # rows (B, H, T)


def value_relation_kl(
    student_values: torch.Tensor,  # (B, H, T, Dh_s) the last layer's values, split by head
    teacher_values: torch.Tensor,  # (B, H, T, Dh_t): head sizes may differ, head counts not
    mask: torch.Tensor | None = None,  # (B, T): 1 = real token
) -> torch.Tensor:
    """MiniLM's value-relation transfer: KL(VR_teacher || VR_student) row by row, where
    VR = softmax(V V^T / sqrt(Dh)) (B, H, T, T) relates every token's value to every
    other's; averaged over heads and real queries. Relations are T x T whatever the head
    size, so student and teacher widths need no projection.
    """
    _check_heads("value_relation_kl", student_values, teacher_values, same_last=False)
    dtype = _compute_dtype(student_values)
    B, _, T, _ = student_values.shape
    queries = keys = None
    if mask is not None:
        queries, keys = _query_key_masks(mask, B, T, T, "value_relation_kl")

    def log_relation(v: torch.Tensor) -> torch.Tensor:
        v = v.to(dtype)
        scores = (v @ v.transpose(-2, -1)) / math.sqrt(v.shape[-1])  # (B, H, T, T)
        if keys is not None:
            # the most negative float, not -inf: a row with no real key (an all-padding
            # example) then stays finite, and its gradient NaN-free, before it is masked out
            scores = scores.masked_fill(~keys[:, None, None, :], torch.finfo(dtype).min)
        return torch.log_softmax(scores, -1)

    log_t, log_s = log_relation(teacher_values.detach()), log_relation(student_values)
    rows = _kl_rows(log_t, log_s)  # (B, H, T)
    return _masked_mean(rows, None if queries is None else queries[:, None, :])


def minilm_relation_loss(
    student_attn: torch.Tensor,  # (B, H, T, S) last-layer attention probabilities
    teacher_attn: torch.Tensor,  # (B, H, T, S)
    student_values: torch.Tensor,  # (B, H, T, Dh_s) last-layer values
    teacher_values: torch.Tensor,  # (B, H, T, Dh_t)
    *,
    mask: torch.Tensor | None = None,  # (B, T): 1 = real token
) -> torch.Tensor:
    """MiniLM's deep self-attention distillation loss of the last layer: the attention
    distribution KL plus the value-relation KL (the paper's L_AT + L_VR)."""
    return (attention_kl(student_attn, teacher_attn, mask)
            + value_relation_kl(student_values, teacher_values, mask))


def relation_kl(
    student: torch.Tensor,  # (B, T, Ds) a projection's output (queries, keys or values)
    teacher: torch.Tensor,  # (B, T, Dt): widths may differ
    relation_heads: int,
    mask: torch.Tensor | None = None,  # (B, T): 1 = real token
) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation transfer for one of Q, K, V: both
    sides are concatenated over their attention heads and split again into
    `relation_heads` relation heads (so the head counts of student and teacher are free),
    then compared as `value_relation_kl` does."""
    for who, x in (("student", student), ("teacher", teacher)):
        if x.dim() != 3 or x.shape[-1] % relation_heads:
            raise ValueError(f"relation_kl: the {who}'s width {x.shape[-1]} does not split into "
                             f"{relation_heads} relation heads (distill.relation_heads must divide "
                             "the student's and the teacher's attention width)")
    return value_relation_kl(split_values(student, relation_heads), split_values(teacher, relation_heads), mask)


def split_values(v_proj_output: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H * Dh) -> (B, H, T, Dh): a block's `attn.v_proj` output (caught with a
    forward hook) split into heads in the layout the attention uses."""
    B, T, width = v_proj_output.shape
    if n_heads < 1 or width % n_heads:
        raise ValueError(f"split_values: a width of {width} does not split into {n_heads} heads")
    return v_proj_output.view(B, T, n_heads, width // n_heads).transpose(1, 2)


# --------------------------------------------------------------------------- layer maps
def layer_map(n_student: int, n_teacher: int, how: LayerMap = "uniform") -> list[int]:
    """For each student block i (0-based), the teacher block it learns from (0-based).

    Blocks are numbered from 0, so block i's output is `hidden_states[i + 1]` and its
    attention `attentions[i]`; the embedding outputs (`hidden_states[0]`) pair with each
    other and are not part of the map.

    - "uniform": TinyBERT's g(m) = m * N / M with 1-based student layer m, M student and
      N teacher layers: 0-based student i learns from teacher floor((i + 1) * N / M) - 1,
      so the top student block always learns from the top teacher block (3 from 6:
      [1, 3, 5]);
    - "last": the top student blocks from the top teacher blocks (3 from 6: [3, 4, 5]);
    - a list of n_student teacher indices, each in 0..n_teacher - 1.
    """
    for name, n in (("n_student", n_student), ("n_teacher", n_teacher)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"distill.layer_map: {name} must be a positive number of layers, "
                             f"got {n!r}")
    if isinstance(how, str):
        if how not in ("uniform", "last"):
            raise ValueError(f"distill.layer_map: {how!r} is not 'uniform', 'last' or a list of "
                             "teacher layer indices")
        if n_student > n_teacher:
            raise ValueError(f"distill.layer_map: a {how!r} map needs no more student layers "
                             f"than teacher layers, got {n_student} and {n_teacher}; give an "
                             "explicit list")
        if how == "uniform":
            return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]
        return list(range(n_teacher - n_student, n_teacher))
    mapping = list(how)
    if len(mapping) != n_student:
        raise ValueError(f"distill.layer_map has {len(mapping)} entries for {n_student} student "
                         "layers: give one teacher layer per student layer")
    for i, t in enumerate(mapping):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_teacher:
            raise ValueError(f"distill.layer_map[{i}] = {t!r}: the teacher has layers "
                             f"0..{n_teacher - 1}")
    return mapping
