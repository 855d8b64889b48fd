import torch
import torch.nn.functional as F

from zerolm.models.losses import linear_cross_entropy


def test_linear_cross_entropy_equals_reference_loss_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(99, 16, requires_grad=True)
    y = torch.randint(0, 99, (37,))
    y[[3, 10, 11]] = -100
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=-100)
    gh, gw = torch.autograd.grad(ref * 2.5, (h, w))
    ours = linear_cross_entropy(h, w, y, chunk=8)
    oh, ow = torch.autograd.grad(ours * 2.5, (h, w))
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(oh, gh, atol=1e-6) and torch.allclose(ow, gw, atol=1e-6)


def test_linear_cross_entropy_is_exact_for_losses_beyond_float_underflow():
    # a label whose probability underflows fp32 (loss ~ 400 nats) is recomputed, not inf
    torch.manual_seed(1)
    h = torch.randn(6, 8, dtype=torch.float64)
    w = torch.randn(50, 8, dtype=torch.float64)
    y = torch.randint(0, 50, (6,))
    h[2] = 40 * (w[(int(y[2]) + 1) % 50] - w[y[2]])  # far from its label's row
    ref = F.cross_entropy(h @ w.t(), y)
    hf, wf = h.float().requires_grad_(), w.float().requires_grad_()
    ours = linear_cross_entropy(hf, wf, y, chunk=4)
    assert ref > 50 and torch.isfinite(ours)
    assert torch.allclose(ours.double(), ref, rtol=1e-5)
    gh, gw = torch.autograd.grad(ours, (hf, wf))
    rh, rw = torch.autograd.grad(F.cross_entropy(hf @ wf.t(), y), (hf, wf))
    assert torch.allclose(gh, rh, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)


def test_linear_cross_entropy_with_every_label_ignored_is_zero_with_zero_gradients():
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.full((5,), -100))
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.item() == 0.0 and not gh.any() and not gw.any()


def test_linear_cross_entropy_backward_twice_with_retained_graph_gives_the_same_gradients():
    h = torch.randn(40, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.randint(0, 30, (40,)), chunk=16)
    first = torch.autograd.grad(loss * 3, (h, w), retain_graph=True)
    second = torch.autograd.grad(loss * 3, (h, w))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
