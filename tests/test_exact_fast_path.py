"""The closed-form (envelope) gradient of the per-label exact W₁ path (issue 6).

``ExactDistance(gradient="closed_form")`` (the default, also used by ``AutoDistance``) computes the
per-class plans and potentials without autograd and enters the graph once with the closed-form
gradients; ``gradient="autograd"`` is the previous implementation. Both must give the same value and
the same gradients w.r.t. the points, the weights and the soft labels (float64 round-off), the value
must be POT's, and a network simplex that stops at ``max_iter`` must be reported once per call.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

import tta.distances._exact as exact_mod
from tta.distances import AutoDistance, ExactDistance
from tta.errors import NumericalWarning

LAMBDA = 1e6


def _problem(
    seed: int,
    k: int,
    soft: bool,
    n: int = 60,
    m: int = 45,
    d: int = 5,
    dtype: torch.dtype = torch.float64,
    coincident: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Random labelled clouds with unequal class sizes, duplicate points and matching class masses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
    x[1] = x[0]  # duplicate source points
    if coincident:
        y[:3] = x[2:5]  # target points that coincide with source points
    # unequal class sizes: class c gets a share proportional to c + 1 (every class nonempty)
    share = torch.arange(1, k + 1, dtype=torch.float64)
    y_cls = torch.multinomial(share, m, replacement=True, generator=g)
    y_cls[:k] = torch.arange(k)
    if soft:
        x_labels = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)
    else:
        x_cls = torch.multinomial(share.flip(0), n, replacement=True, generator=g)
        x_cls[:k] = torch.arange(k)
        x_labels = F.one_hot(x_cls, k).double()
    y_labels = F.one_hot(y_cls, k).double()
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum()
    mass = a @ x_labels  # (k,) class masses of the source
    bw = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    b = bw * mass[y_cls] / (bw @ y_labels)[y_cls]  # the same class masses, unequal weights within a class
    return tuple(t.to(dtype) for t in (x, y, a, b, x_labels, y_labels))


def _value_and_grads(
    est: ExactDistance | AutoDistance, tensors: tuple[torch.Tensor, ...]
) -> list[torch.Tensor]:
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    value = est(*leaves, LAMBDA)
    assert est.diagnostics["path"] == "per_label"
    value.backward()
    return [value.detach()] + [t.grad for t in leaves]


def _pot_per_class(x, y, a, b, x_labels, y_labels) -> float:  # type: ignore[no-untyped-def]
    """Σ_k m_k W₁(μ_k/m_k, ν_k/m_k) with every class solved by POT's emd2 on its own."""
    x, y = x.double().numpy(), y.double().numpy()
    total = 0.0
    for k in range(x_labels.shape[1]):
        wa = (a * x_labels[:, k]).double().numpy()
        wb = (b * y_labels[:, k]).double().numpy()
        ia, ib = wa > 0, wb > 0
        cost = np.linalg.norm(x[ia][:, None] - y[ib][None], axis=2)
        m_k = 0.5 * (wa.sum() + wb.sum())
        total += m_k * float(ot.emd2(wa[ia] / wa.sum(), wb[ib] / wb.sum(), cost))
    return total


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("coincident", [False, True])
def test_closed_form_equals_autograd_path_and_pot(k: int, soft: bool, coincident: bool) -> None:
    tensors = _problem(seed=10 * k + soft, k=k, soft=soft, coincident=coincident)
    fast = _value_and_grads(ExactDistance(), tensors)
    slow = _value_and_grads(ExactDistance(gradient="autograd"), tensors)
    names = ["value", "x", "y", "a", "b", "x_labels", "y_labels"]
    for name, f, s in zip(names, fast, slow):
        scale = max(1.0, float(s.abs().max()))
        # the autograd path takes the cost of a coincident pair from cdist's matrix-product formula,
        # about 1e-8 instead of 0 in float64 (√ε), which moves its value and dual potentials (hence the
        # weight and label gradients) by that much; the point gradients agree to round-off either way
        tol = 1e-7 if (coincident and name not in ("x", "y")) else 1e-9
        assert float((f - s).abs().max()) <= tol * scale, name
    # the value is POT's emd2 on costs from direct differences (coincident pairs cost exactly 0)
    assert float(fast[0]) == pytest.approx(_pot_per_class(*tensors), rel=1e-12)
    # the gradient w.r.t. a coincident pair is finite (the zero subgradient)
    assert all(bool(torch.isfinite(g).all()) for g in fast[1:])


def test_hard_labels_equal_the_joint_emd_and_both_cost_layouts_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, a, b, xl, yl = _problem(seed=3, k=3, soft=False)
    cost = torch.cdist(x, y) + LAMBDA * torch.cdist(xl, yl)  # the joint label-aware ground cost
    joint = float(ot.emd2(a.numpy(), (b * (a.sum() / b.sum())).numpy(), cost.numpy()))
    full = _value_and_grads(ExactDistance(), (x, y, a, b, xl, yl))
    assert float(full[0]) == pytest.approx(joint, rel=1e-10)
    # one cost matrix per class instead of one for the whole call: same value and gradients, with hard
    # labels (the classes split the source points) and soft ones (every class holds all of them)
    soft = _problem(seed=4, k=3, soft=True)
    full_soft = _value_and_grads(ExactDistance(), soft)
    monkeypatch.setattr(exact_mod, "_FULL_COST_MAX_PAIRS", 0)
    per_class = _value_and_grads(ExactDistance(), (x, y, a, b, xl, yl))
    per_class_soft = _value_and_grads(ExactDistance(), soft)
    for f, q in zip(full + full_soft, per_class + per_class_soft):
        torch.testing.assert_close(f, q, rtol=1e-12, atol=1e-13)


def test_closed_form_gradient_matches_finite_differences() -> None:
    x, y, a, b, xl, yl = _problem(seed=5, k=3, soft=True, n=12, m=9, d=3)
    x[1] += 0.1  # no duplicate points and (below) no coincident pairs: the value is differentiable in x
    y = y + 0.05
    est = ExactDistance()
    assert torch.autograd.gradcheck(
        lambda z: est(z, y, a, b, xl, yl, LAMBDA), (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6
    )
    # soft labels: a direction that keeps the rows on the simplex and the class masses balanced
    lr = xl.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(est(x, y, a, b, lr, yl, LAMBDA), lr)
    direction = torch.zeros_like(xl)
    direction[0, 0], direction[0, 1], direction[1, 0], direction[1, 1] = 1.0, -1.0, -a[0] / a[1], a[0] / a[1]
    t = 1e-6
    up = float(est(x, y, a, b, xl + t * direction, yl, LAMBDA))
    down = float(est(x, y, a, b, xl - t * direction, yl, LAMBDA))
    assert (up - down) / (2 * t) == pytest.approx(float((grad * direction).sum()), rel=1e-5, abs=1e-9)


def test_float32_inputs_and_auto_distance() -> None:
    tensors = _problem(seed=7, k=4, soft=True, dtype=torch.float32)
    fast = _value_and_grads(AutoDistance(), tensors)
    slow = _value_and_grads(ExactDistance(gradient="autograd"), tensors)
    assert all(t.dtype == torch.float32 for t in fast)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-6)


def test_only_the_inputs_that_need_a_gradient_get_one() -> None:
    x, y, a, b, xl, yl = _problem(seed=8, k=3, soft=True)
    xr = x.clone().requires_grad_(True)
    value = ExactDistance()(xr, y, a, b, xl, yl, LAMBDA)
    assert value.requires_grad
    (gx,) = torch.autograd.grad(value, xr)
    assert gx.shape == x.shape
    plain = ExactDistance()(x, y, a, b, xl, yl, LAMBDA)
    assert not plain.requires_grad and float(plain) == pytest.approx(float(value.detach()), rel=1e-15)
    with torch.no_grad():
        assert not ExactDistance()(xr, y, a, b, xl, yl, LAMBDA).requires_grad
    # first derivatives only: a second derivative raises rather than coming out wrong
    (gx,) = torch.autograd.grad(ExactDistance()(xr, y, a, b, xl, yl, LAMBDA), xr, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not require grad|twice"):
        torch.autograd.grad(gx.sum(), xr)


def test_bad_gradient_option_and_too_large_class() -> None:
    with pytest.raises(ValueError, match="gradient must be 'closed_form' or 'autograd'"):
        ExactDistance(gradient="dense")  # type: ignore[arg-type]
    x, y, a, b, xl, yl = _problem(seed=9, k=2, soft=True)
    with pytest.raises(ValueError, match=r"class 0.*max_points = 10"):
        ExactDistance(max_points=10)(x, y, a, b, xl, yl, LAMBDA)


@pytest.mark.parametrize("make", [lambda: ExactDistance(max_iter=3), lambda: AutoDistance(max_iter=3)])
def test_non_convergence_is_one_numerical_warning_per_call(make) -> None:  # type: ignore[no-untyped-def]
    x, y, a, b, xl, yl = _problem(seed=11, k=5, soft=True, n=80, m=70)
    est = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est(x, y, a, b, xl, yl, LAMBDA)
    numerical = [w for w in caught if issubclass(w.category, NumericalWarning)]
    assert len(numerical) == 1 and len(caught) == 1
    message = str(numerical[0].message)
    assert "did not converge in 5 of 5 subproblem(s)" in message
    assert "class 0 (exact, n = 80, m =" in message
    assert "raise max_iter" in message and "now 3" in message and "'sinkhorn'" in message
    diag = est.diagnostics
    assert diag["converged"] is False and "numItermax" in diag["warning"]
    assert [r["converged"] for r in diag["subproblems"]] == [False] * 5
    assert {r["result_code"] for r in diag["subproblems"]} == {3}  # POT's MAX_ITER_REACHED
    # a converged call on the same estimator emits nothing and clears the flag
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.__init__(max_iter=1_000_000)  # type: ignore[misc]
        est(x, y, a, b, xl, yl, LAMBDA)
    assert not caught and est.diagnostics["converged"] is True
