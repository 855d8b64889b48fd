"""Loss kernels models compute inside their forward (so DDP sees every parameter used)."""

from __future__ import annotations

import torch

# Rows of logits per chunk are chosen so that one chunk holds about this many floats
# (32 MB in fp32): small enough to keep memory flat for any vocabulary, large enough
# for the matmuls to run at full speed.
_CHUNK_ELEMENTS = 1 << 23


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against labels, computed in row chunks.

    The (N, V) logits are never materialised at once. Each chunk's logits are turned
    into their softmax in place by one fused kernel, then into the gradient
    (softmax - one-hot) / n on the spot: besides the matmuls, the V-wide chunk is swept
    once and never reallocated. The loss of a row is -log softmax[label], exact while
    that probability is a normal float; rows beyond it (a loss over ~87 nats, only in a
    diverging run) are recomputed through logsumexp. The result equals F.cross_entropy.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index: int, chunk: int):
        # the loss is computed in fp32 even under bf16 autocast (softmax over a wide vocabulary)
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w, loss = _linear_cross_entropy_fwd_bwd(
                hidden.float(), weight.float(), labels, ignore_index, chunk)
        ctx.save_for_backward(grad_h.to(hidden.dtype), grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def _linear_cross_entropy_fwd_bwd(h, w, labels, ignore_index: int, chunk: int):
    """(dL/dh (N, D), dL/dw (V, D), mean loss) for L = mean CE(h @ w.T, labels)."""
    valid = labels != ignore_index  # (N,)
    n = int(valid.sum())
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    if n == 0:
        return torch.zeros_like(h), torch.zeros_like(w), total
    grad_h = torch.empty_like(h)  # every row is written below
    grad_w = torch.empty_like(w)  # written by the first chunk, accumulated by the others
    targets = torch.where(valid, labels, torch.zeros_like(labels))[:, None]  # (N, 1)
    weights = valid.to(h.dtype)[:, None] / n  # (N, 1): 1/n on counted rows, 0 on ignored ones
    for s in range(0, h.shape[0], chunk):
        hc, yc, wc = h[s:s + chunk], targets[s:s + chunk], weights[s:s + chunk]
        probs = hc @ w.t()  # (C, V) logits ...
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)  # ... softmax, in place
        p_label = probs.gather(1, yc)  # (C, 1)
        row_loss = -torch.log(p_label)
        lost = p_label < torch.finfo(p_label.dtype).tiny  # underflowed: -log is inf or inexact
        if bool(lost.any()):
            rows = lost.squeeze(1).nonzero().squeeze(1)
            logits = hc[rows] @ w.t()  # (R, V), recomputed for the few rows only
            exact = torch.logsumexp(logits, -1) - logits.gather(1, yc[rows]).squeeze(1)
            row_loss[rows] = exact[:, None]
        total += (row_loss * wc).sum()
        probs.scatter_add_(1, yc, torch.full_like(p_label, -1.0))  # softmax - one-hot
        # the row weights scale the D-wide factors, not the V-wide probs: one sweep fewer
        torch.mm(probs, w, out=grad_h[s:s + chunk]).mul_(wc)
        if s == 0:
            torch.mm(probs.t(), hc * wc, out=grad_w)
        else:
            grad_w.addmm_(probs.t(), hc * wc)
    return grad_h, grad_w, total


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, chunk: int | None = None) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, labels) without the full logits tensor.

    hidden (N, D), weight (V, D), labels (N,). Gradients for hidden and weight are
    computed during the forward pass, so call backward on the result exactly once.
    `chunk` rows of logits are alive at a time (default: about 32 MB of them).
    """
    if chunk is None:
        chunk = max(64, _CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, chunk)
