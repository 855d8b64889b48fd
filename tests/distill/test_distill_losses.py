"""Distillation losses: values computed by hand, parity with naive reference forms in value
and gradients, the chunked LM KL's bound on the logits it forms, and the TinyBERT / MiniLM
losses on a real tiny model's attention maps and values."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from zerolm.distill import (
    attention_kl,
    attention_mse,
    chunked_lm_kl,
    hidden_mse,
    layer_map,
    minilm_relation_loss,
    soft_target_loss,
    split_values,
    value_relation_kl,
)
from zerolm.models import ModelConfig, body_of, build_model
from zerolm.models.layers import split_heads

KINDS = ["kl", "reverse_kl", "js"]
TINY_BERT = ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                        max_seq_len=32, dropout=0.0, attn_dropout=0.0)


def padding_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) right-padding mask: 1 on the first lengths[b] positions of row b."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # the graph is kept: some tests then call backward to see where gradients land
    return torch.autograd.grad(loss, inputs, retain_graph=True)


# ------------------------------------------------------------------ soft targets
def hand_divergence(s_row: list[float], t_row: list[float], temperature: float, kind: str) -> float:
    """The divergence of one row, in plain Python floats."""
    def softmax(z):
        e = [math.exp(x / temperature) for x in z]
        return [x / sum(e) for x in e]

    def kl(p, q):
        return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))

    ps, pt = softmax(s_row), softmax(t_row)
    if kind == "kl":
        return kl(pt, ps)
    if kind == "reverse_kl":
        return kl(ps, pt)
    m = [(a + b) / 2 for a, b in zip(pt, ps)]
    return 0.5 * kl(pt, m) + 0.5 * kl(ps, m)


def naive_soft_target(s, t, temperature, kind, mask=None):
    """The textbook form: probabilities, their logs, the valid rows selected by indexing."""
    ps, pt = F.softmax(s / temperature, -1), F.softmax(t / temperature, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if kind == "kl":
        rows = kl(pt, ps)
    elif kind == "reverse_kl":
        rows = kl(ps, pt)
    else:
        m = (pt + ps) / 2
        rows = 0.5 * kl(pt, m) + 0.5 * kl(ps, m)
    if mask is not None:
        rows = rows[mask.bool()]
    return rows.mean() * temperature ** 2


@pytest.mark.parametrize("kind", KINDS)
def test_soft_target_loss_equals_a_hand_computation_times_t_squared(kind):
    s = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2]]
    t = [[0.2, 1.5, -0.7], [2.0, -1.0, 0.4]]
    T = 2.0
    expected = T ** 2 * sum(hand_divergence(a, b, T, kind) for a, b in zip(s, t)) / 2
    got = soft_target_loss(torch.tensor(s), torch.tensor(t), temperature=T, kind=kind)
    assert expected > 0.01
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_soft_target_loss_is_zero_when_the_student_equals_the_teacher(kind):
    logits = torch.randn(2, 5, 7) * 3
    assert soft_target_loss(logits, logits.clone(), temperature=3.0, kind=kind).abs().item() < 1e-6
    assert soft_target_loss(logits, logits.flip(-1), temperature=3.0, kind=kind).item() > 1e-3


def test_js_is_symmetric_and_kl_is_not():
    a, b = torch.randn(6, 9) * 2, torch.randn(6, 9) * 2
    js_ab = soft_target_loss(a, b, kind="js", temperature=1.5)
    js_ba = soft_target_loss(b, a, kind="js", temperature=1.5)
    assert torch.allclose(js_ab, js_ba, atol=1e-7)
    assert js_ab <= math.log(2) * 1.5 ** 2  # bounded by log 2 (times T^2)
    # forward KL of (a, b) is reverse KL of (b, a), and differs from forward KL of (b, a)
    kl_ab = soft_target_loss(a, b, kind="kl")
    assert torch.allclose(kl_ab, soft_target_loss(b, a, kind="reverse_kl"), atol=1e-6)
    assert not torch.allclose(kl_ab, soft_target_loss(b, a, kind="kl"), atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_rows_of_soft_target_loss_do_not_contribute(kind):
    s, t = torch.randn(3, 4, 10), torch.randn(3, 4, 10)
    mask = padding_mask([4, 2, 1], 4)
    loss = soft_target_loss(s, t, kind=kind, temperature=2.0, mask=mask)
    on_valid = soft_target_loss(s[mask.bool()], t[mask.bool()], kind=kind, temperature=2.0)
    assert torch.allclose(loss, on_valid, atol=1e-6)
    # anything at a padded position, even a huge logit, changes neither value nor gradient
    s2, t2 = s.clone().requires_grad_(), t.clone()
    s2.data[~mask.bool()] = 1e4
    t2[~mask.bool()] = -1e4
    loss2 = soft_target_loss(s2, t2, kind=kind, temperature=2.0, mask=mask)
    (g,) = grads(loss2, s2)
    assert torch.allclose(loss2, loss, atol=1e-6)
    assert not g[~mask.bool()].any() and g[mask.bool()].abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_soft_target_gradients_equal_the_naive_form_and_spare_the_teacher(kind):
    s = (torch.randn(2, 5, 11) * 4).requires_grad_()
    t = (torch.randn(2, 5, 11) * 4).requires_grad_()
    mask = padding_mask([5, 3], 5)
    ours = soft_target_loss(s, t, temperature=2.0, kind=kind, mask=mask)
    ref = naive_soft_target(s, t.detach(), 2.0, kind, mask)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(grads(ours, s)[0], grads(ref, s)[0], atol=1e-6)
    ours.backward()
    assert t.grad is None  # the teacher's logits are targets


def test_soft_target_loss_is_stable_for_large_logits_and_low_precision():
    s = torch.randn(4, 50) * 1e4  # naive exp would overflow
    t = torch.randn(4, 50) * 1e4
    assert torch.isfinite(soft_target_loss(s, t))
    half = soft_target_loss(s[:, :8].bfloat16() / 1e3, t[:, :8].bfloat16() / 1e3)
    assert half.dtype == torch.float32  # computed in fp32, whatever the logits' dtype


def test_soft_target_loss_rejects_bad_arguments_by_name():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="kind 'kld'"):
        soft_target_loss(x, x, kind="kld")
    with pytest.raises(ValueError, match="mask has shape \\(3,\\), expected \\(2,\\)"):
        soft_target_loss(x, x, mask=torch.ones(3))


# ------------------------------------------------------------------ chunked LM KL
def lm_problem(dtype=torch.float32, B=3, T=7, Ds=8, Dt=12, V=103):
    g = torch.Generator().manual_seed(3)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return dict(student_hidden=r(B, T, Ds), student_head_weight=r(V, Ds, scale=0.5),
                student_bias=r(V, scale=0.3), teacher_hidden=r(B, T, Dt),
                teacher_head_weight=r(V, Dt, scale=0.5), teacher_bias=r(V, scale=0.3))


def naive_lm_kl(p, temperature, mask):
    s = p["student_hidden"] @ p["student_head_weight"].t() + p["student_bias"]  # (B, T, V)
    t = p["teacher_hidden"] @ p["teacher_head_weight"].t() + p["teacher_bias"]
    return soft_target_loss(s, t, temperature=temperature, mask=mask)


def test_chunked_lm_kl_equals_the_naive_form_in_value_and_gradients():
    # V = 103 and 14 valid rows: neither is a multiple of the chunk of 4 rows
    p = lm_problem()
    mask = padding_mask([7, 4, 3], 7)
    student = (p["student_hidden"], p["student_head_weight"], p["student_bias"])
    ref = naive_lm_kl(p, 2.0, mask)
    ours = chunked_lm_kl(**p, temperature=2.0, mask=mask, chunk=4)
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(grads(ours * 1.7, *student), grads(ref * 1.7, *student)):
        assert torch.allclose(a, b, atol=1e-5)
    ours.backward()
    assert all(p[k].grad is None for k in ("teacher_hidden", "teacher_head_weight", "teacher_bias"))
    assert not p["student_hidden"].grad[~mask.bool()].any()  # padded positions get no gradient


def test_chunked_lm_kl_passes_gradcheck_in_float64():
    p = lm_problem(torch.float64, B=2, T=3, Ds=3, Dt=4, V=11)
    mask = padding_mask([3, 2], 3)
    teacher = {k: p[k].detach() for k in ("teacher_hidden", "teacher_head_weight", "teacher_bias")}

    def f(h, w, b):
        return chunked_lm_kl(h, w, student_bias=b, temperature=2.0, mask=mask, chunk=2, **teacher)

    assert torch.autograd.gradcheck(
        f, (p["student_hidden"], p["student_head_weight"], p["student_bias"]))


def test_chunked_lm_kl_without_head_gradients_and_without_biases():
    # a frozen (e.g. tied and shared) head: only the hidden states are trained
    p = lm_problem()
    w = p["student_head_weight"].detach()
    h = p["student_hidden"]
    ours = chunked_lm_kl(h, w, p["teacher_hidden"], p["teacher_head_weight"], chunk=5)
    ref = soft_target_loss(h @ w.t(), p["teacher_hidden"] @ p["teacher_head_weight"].t())
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(grads(ours, h)[0], grads(ref, h)[0], atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an ATen op returns while it is active."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.most = max(self.most, x.numel())
        return out


def test_chunked_lm_kl_never_forms_more_than_a_chunk_of_logits():
    """Every tensor created on the way is seen at the ATen level: a TorchDispatchMode sits
    below autograd, so it sees each op of the custom Function's forward, of its backward
    and of autograd's own backward (the scatter of the masked rows), including in-place
    results. The largest of them must hold no more than `chunk` rows of V logits. The same
    recorder around the naive form sees its (B, T, V) logits, so the bound can fail."""
    B, T, D, V, chunk = 4, 16, 4, 1000, 8  # B*T*V = 64_000 >> chunk*V = 8_000 > V*D = 4_000
    p = lm_problem(B=B, T=T, Ds=D, Dt=D, V=V)
    mask = padding_mask([16, 16, 11, 5], T)
    with LargestTensor() as seen:
        loss = chunked_lm_kl(**p, mask=mask, chunk=chunk)
        loss.backward()
    assert seen.most <= chunk * V
    with LargestTensor() as naive:
        naive_lm_kl(p, 1.0, mask).backward()
    assert naive.most >= B * T * V


def test_chunked_lm_kl_rejects_different_vocabularies():
    p = lm_problem()
    with pytest.raises(ValueError, match="103 vocabulary rows and the teacher's 50"):
        chunked_lm_kl(p["student_hidden"], p["student_head_weight"], p["teacher_hidden"],
                      p["teacher_head_weight"][:50])


# ------------------------------------------------------------------ TinyBERT
def test_hidden_mse_with_a_projection_is_zero_on_its_image_and_trains_the_projection():
    torch.manual_seed(0)
    proj = nn.Linear(8, 12)
    h = torch.randn(2, 5, 8, requires_grad=True)
    mask = padding_mask([5, 2], 5)
    assert hidden_mse(h, proj(h).detach(), proj=proj, mask=mask).item() == 0.0
    teacher = torch.randn(2, 5, 12)
    ours = hidden_mse(h, teacher, proj=proj, mask=mask)
    keep = mask.bool()
    ref = F.mse_loss(proj(h)[keep], teacher[keep])  # mean over valid positions and features
    assert torch.allclose(ours, ref, atol=1e-6)
    params = (h, proj.weight, proj.bias)
    ours_g, ref_g = grads(ours, *params), grads(ref, *params)
    assert proj.weight.grad is None and ours_g[1].abs().sum() > 0  # the projection learns
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours_g, ref_g))


def test_hidden_mse_without_a_projection_between_widths_says_what_to_give():
    with pytest.raises(ValueError, match=r"nn\.Linear\(8, 12\)"):
        hidden_mse(torch.randn(2, 3, 8), torch.randn(2, 3, 12))


def tiny_bert():
    torch.manual_seed(0)
    return build_model(TINY_BERT).eval()


def padded_batch():
    ids = torch.randint(5, 99, (3, 9), generator=torch.Generator().manual_seed(1))
    return ids, padding_mask([9, 6, 3], 9)


def test_attention_mse_is_zero_against_a_copy_and_positive_after_a_perturbation():
    student = tiny_bert()
    teacher = copy.deepcopy(student)
    ids, mask = padded_batch()

    def maps(model):
        with torch.no_grad():
            out = body_of(model)(ids, attention_mask=mask, output_hidden_states=True,
                                 output_attentions=True)
        return out.attentions

    for s, t in zip(maps(student), maps(teacher)):
        assert attention_mse(s, t, mask=mask).item() == 0.0
    with torch.no_grad():
        body_of(teacher).blocks[0].attn.q_proj.weight.add_(0.5 * torch.randn(32, 32))
    assert attention_mse(maps(student)[0], maps(teacher)[0], mask=mask).item() > 1e-6


def random_maps(B, H, T, lengths, requires_grad=False):
    """Attention probabilities (B, H, T, T) whose padded keys hold 0, as a body's do."""
    scores = torch.randn(B, H, T, T) * 2
    keys = padding_mask(lengths, T).bool()[:, None, None, :]
    probs = scores.masked_fill(~keys, float("-inf")).softmax(-1)
    return probs.requires_grad_(requires_grad)


def test_attention_mse_leaves_out_padded_rows_and_columns_like_the_naive_form():
    lengths = [6, 4, 2]
    s, t = random_maps(3, 2, 6, lengths, True), random_maps(3, 2, 6, lengths)
    mask = padding_mask(lengths, 6)
    ours = attention_mse(s, t, mask=mask)
    ref = torch.cat([(s[b, :, :n, :n] - t[b, :, :n, :n]).pow(2).flatten()
                     for b, n in enumerate(lengths)]).mean()
    assert torch.allclose(ours, ref, atol=1e-7)
    assert torch.allclose(grads(ours, s)[0], grads(ref, s)[0], atol=1e-7)
    # the padded query rows (which a body still fills) do not count
    t2 = t.clone()
    t2[2, :, 2:, :] = 0.5
    assert torch.allclose(attention_mse(s, t2, mask=mask), ours)


def test_attention_losses_name_both_head_counts_when_they_differ():
    s, t = torch.rand(1, 4, 3, 3), torch.rand(1, 2, 3, 3)
    for loss in (attention_mse, attention_kl):
        with pytest.raises(ValueError, match="student has 4 attention heads and the teacher 2"):
            loss(s, t)


# ------------------------------------------------------------------ MiniLM
def test_attention_kl_equals_the_naive_row_wise_kl_with_padding():
    lengths = [5, 3]
    s, t = random_maps(2, 3, 5, lengths, True), random_maps(2, 3, 5, lengths)
    mask = padding_mask(lengths, 5)
    assert attention_kl(t, t.clone(), mask).item() == 0.0
    ours = attention_kl(s, t, mask)
    # KL(teacher || student) of every real (head, query) row over the real keys
    rows = [F.kl_div(s[b, :, :n, :n].log(), t[b, :, :n, :n], reduction="none").sum(-1).flatten()
            for b, n in enumerate(lengths)]
    ref = torch.cat(rows).mean()
    assert ours.item() > 1e-3
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(grads(ours, s)[0], grads(ref, s)[0], atol=1e-6)


def naive_value_relation_kl(vs, vt, lengths):
    """Per example, the real tokens only: softmax(V V^T / sqrt(Dh)) row-wise KL."""
    rows = []
    for b, n in enumerate(lengths):
        rs = vs[b, :, :n] @ vs[b, :, :n].transpose(-1, -2) / math.sqrt(vs.shape[-1])
        rt = vt[b, :, :n] @ vt[b, :, :n].transpose(-1, -2) / math.sqrt(vt.shape[-1])
        rows.append(F.kl_div(rs.log_softmax(-1), rt.log_softmax(-1), log_target=True,
                             reduction="none").sum(-1).flatten())
    return torch.cat(rows).mean()


def test_value_relation_kl_equals_the_naive_form_across_head_sizes():
    lengths = [6, 4, 1]
    vs = torch.randn(3, 2, 6, 4, requires_grad=True)  # student heads of 4
    vt = torch.randn(3, 2, 6, 8)  # teacher heads of 8
    mask = padding_mask(lengths, 6)
    ours = value_relation_kl(vs, vt, mask)
    ref = naive_value_relation_kl(vs, vt, lengths)
    assert ours.item() > 1e-3
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(grads(ours, vs)[0], grads(ref, vs)[0], atol=1e-6)


def test_value_relation_kl_is_zero_for_equal_relations_of_different_head_sizes():
    # teacher heads twice as wide: [2^(1/4) v, 0] has the same V V^T / sqrt(Dh) as v,
    # so the loss is 0 only if each side is scaled by its own head size
    vs = torch.randn(2, 3, 5, 4)
    vt = torch.cat([vs * 2 ** 0.25, torch.zeros_like(vs)], -1)
    assert value_relation_kl(vs, vs.clone()).item() == 0.0
    assert value_relation_kl(vs, vt).abs().item() < 1e-6
    assert value_relation_kl(vs, torch.cat([vs, torch.zeros_like(vs)], -1)).item() > 1e-4
    with pytest.raises(ValueError, match="student has 3 attention heads and the teacher 2"):
        value_relation_kl(vs, torch.randn(2, 2, 5, 4))


def test_split_values_uses_the_attention_layout_and_rejects_uneven_widths():
    x = torch.randn(2, 5, 12)
    assert torch.equal(split_values(x, 3), split_heads(x, 3))
    assert split_values(x, 3).shape == (2, 3, 5, 4)
    with pytest.raises(ValueError, match="width of 12 does not split into 5 heads"):
        split_values(x, 5)


def test_minilm_loss_on_a_model_and_its_copy_is_zero_then_positive_after_a_change():
    student = tiny_bert()
    teacher = copy.deepcopy(student)
    ids, mask = padded_batch()

    def last_layer(model):
        body = body_of(model)
        attn = body.blocks[-1].attn
        seen = []
        hook = attn.v_proj.register_forward_hook(lambda m, args, out: seen.append(out))
        try:
            with torch.no_grad():
                out = body(ids, attention_mask=mask, output_attentions=True)
        finally:
            hook.remove()
        return out.attentions[-1], split_values(seen[0], attn.n_heads)

    (a_s, v_s), (a_t, v_t) = last_layer(student), last_layer(teacher)
    assert minilm_relation_loss(a_s, a_t, v_s, v_t, mask=mask).item() == 0.0
    with torch.no_grad():
        body_of(teacher).blocks[-1].attn.v_proj.weight.add_(0.5 * torch.randn(32, 32))
    a_t, v_t = last_layer(teacher)
    # only the values changed: the attention term stays 0, the value relations differ
    assert attention_kl(a_s, a_t, mask).item() == 0.0
    assert minilm_relation_loss(a_s, a_t, v_s, v_t, mask=mask).item() > 1e-4


# ------------------------------------------------------------------ layer maps
def test_uniform_layer_map_is_tinyberts_g_of_m():
    assert layer_map(3, 6, "uniform") == [1, 3, 5]  # g(m) = 2m, m = 1..3, 0-based
    assert layer_map(4, 12) == [2, 5, 8, 11]  # TinyBERT-4 from BERT-base: g(m) = 3m
    assert layer_map(4, 6) == [0, 2, 3, 5]  # floor when M does not divide N; top to top
    assert layer_map(6, 6) == list(range(6))


def test_last_and_explicit_layer_maps():
    assert layer_map(3, 6, "last") == [3, 4, 5]
    assert layer_map(3, 6, [0, 0, 5]) == [0, 0, 5]


def test_layer_map_errors_name_the_bad_entry_and_the_valid_range():
    with pytest.raises(ValueError) as bad:
        layer_map(3, 6, [0, 2, 9])
    assert str(bad.value) == "distill.layer_map[2] = 9: the teacher has layers 0..5"
    with pytest.raises(ValueError, match=r"layer_map\[0\] = -1"):
        layer_map(3, 6, [-1, 2, 4])
    with pytest.raises(ValueError, match="2 entries for 3 student layers"):
        layer_map(3, 6, [0, 1])
    with pytest.raises(ValueError, match="'first' is not"):
        layer_map(3, 6, "first")
    with pytest.raises(ValueError, match="needs no more student layers than teacher layers"):
        layer_map(6, 3, "uniform")


def test_relation_kl_is_zero_for_a_copy_and_matches_the_per_head_form():
    from zerolm.distill.losses import relation_kl, split_values, value_relation_kl

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert relation_kl(t, t, 4, mask).item() == pytest.approx(0.0, abs=1e-7)
    got = relation_kl(s, t, 4, mask)
    want = value_relation_kl(split_values(s, 4), split_values(t, 4), mask)
    assert torch.allclose(got, want)
    # by hand: KL(softmax(t_r t_r^T / sqrt(d)) || softmax(s_r s_r^T / sqrt(d))) per relation head r,
    # over real keys, averaged over heads and real queries
    total, n = 0.0, 0
    for b in range(2):
        keep = int(mask[b].sum())
        for r in range(4):
            sr, tr = s[b, :keep, r * 3:(r + 1) * 3], t[b, :keep, r * 2:(r + 1) * 2]
            p = torch.softmax(tr @ tr.T / 2 ** 0.5, -1)
            log_q = torch.log_softmax(sr @ sr.T / 3 ** 0.5, -1)
            total = total + (p * (p.log() - log_q)).sum()
            n += keep
    assert got.item() == pytest.approx((total / n).item(), rel=1e-5)
    g1, = torch.autograd.grad(got, s)
    g2, = torch.autograd.grad(total / n, s)
    assert torch.allclose(g1, g2, atol=1e-6)
    with pytest.raises(ValueError, match="does not split into 5 relation heads"):
        relation_kl(s, t, 5)
