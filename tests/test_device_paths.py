"""Paths that broke on CUDA first: rounding that only a GPU's summation order triggers, reproduced here."""

from __future__ import annotations

import pytest
import torch

from tta.heads import LinearHead, input_gradient_norms, penalised_loss


def test_gradient_penalty_is_finite_at_a_zero_gradient_norm() -> None:
    # A zero head makes every squared input-gradient norm exactly 0 (on CUDA it rounded below 0): the
    # square root's gradient must stay finite, or the reference classifier trains to NaN.
    g = torch.Generator().manual_seed(0)
    head = LinearHead(5, 3)
    torch.nn.init.zeros_(head.weight)
    z, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss, _ = penalised_loss(head, z, y, tau=0.02, w_gp=1e4, generator=g)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all() and torch.isfinite(head.bias.grad).all()
    assert float(input_gradient_norms(head, z, y).detach().max()) < 1e-12


def test_gradient_norm_matches_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    head = LinearHead(6, 4)
    z, y = torch.randn(10, 6, generator=g, requires_grad=True), torch.randint(0, 4, (10,), generator=g)
    ce = torch.nn.functional.cross_entropy(head(z), y, reduction="sum")
    (grad,) = torch.autograd.grad(ce, z)
    torch.testing.assert_close(
        input_gradient_norms(head, z.detach(), y), grad.norm(dim=1), rtol=1e-5, atol=1e-7
    )


@pytest.mark.gpu
def test_exact_closed_form_gradient_on_cuda_equals_cpu() -> None:
    """The closed-form W₁ gradient (solved on the CPU) comes back to CUDA inputs with the CPU's values."""
    from tta.distances import ExactDistance

    g = torch.Generator().manual_seed(2)
    n, m, d, k = 60, 48, 7, 4  # balanced classes and a large label cost: the per-label fast path
    x, y = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) + 0.3
    lx = torch.nn.functional.one_hot(torch.arange(n) % k, k).float()
    ly = torch.nn.functional.one_hot(torch.arange(m) % k, k).float()
    a, b = torch.full((n,), 1.0 / n), torch.full((m,), 1.0 / m)

    def value_and_grads(device: str) -> list[torch.Tensor]:
        xs = x.detach().clone().to(device).requires_grad_(True)  # a fresh leaf on each device
        ls = lx.detach().clone().to(device).requires_grad_(True)
        est = ExactDistance()
        w = est(xs, y.to(device), a.to(device), b.to(device), ls, ly.to(device), 1e6)
        w.backward()
        assert est.diagnostics["path"] == "per_label"
        assert xs.grad.device.type == device and ls.grad.device.type == device
        return [w.detach().cpu(), xs.grad.cpu(), ls.grad.cpu()]

    for cpu, cuda in zip(value_and_grads("cpu"), value_and_grads("cuda")):
        torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-6)
