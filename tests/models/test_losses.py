import torch
import torch.nn.functional as F

from zerolm.tasks.losses import linear_cross_entropy


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
