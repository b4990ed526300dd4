"""Tests of tta.distances: closed forms, the POT oracle, the label-aware paths, gradients, errors.

Tolerances (measured on seeded clouds, n = 150..200, d = 5 and 64; see the report in the estimators'
docstrings): exact EMD agrees with ``ot.emd2`` to float32 round-off (< 2e-7 relative), so 1e-6;
debiased Sinkhorn with the default blur 0.01 underestimates W₁ by 1.0-2.3% (d = 64 / d = 5), so 3%;
with blur 0.001 by 0.2-1.0%, so 1.5%.

The shared checks live in the package (``tta.testing.DistanceEstimatorTests``, with the contract
``tta.testing.check_distance_estimator``): a third-party estimator gets the same checks by subclassing
the mixin and setting ``make`` and the tolerances; test_distance_contract.py runs the contract on every
registered name.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tta.distances import (
    AutoDistance,
    DistanceEstimator,
    ExactDistance,
    SinkhornDistance,
    choose_label_path,
    create_distance,
    data_scale,
    emd_plan,
    feature_diameter,
    label_marginals,
)
from tta.plugins import DISTANCES, PluginNotFoundError
from tta.testing import DistanceEstimatorTests
from tta.testing import labelled_clouds as _labelled
from tta.testing import matching_target_weights as _matching_target_weights
from tta.testing import random_clouds as _clouds
from tta.testing import reference_w1 as _reference_w1

ROOT = Path(__file__).resolve().parents[1]
LAMBDA = 1e6
SQRT2 = math.sqrt(2.0)


class TestExactDistance(DistanceEstimatorTests):
    rtol_random = 1e-6
    rtol_closed_form = 1e-6
    rtol_joint = 1e-6
    rtol_1d = 1e-9

    def make(self) -> DistanceEstimator:
        return ExactDistance()

    @settings(max_examples=20, deadline=None)
    @given(seed=st.integers(0, 2**16), v=st.lists(st.floats(-5, 5), min_size=4, max_size=4))
    def test_translation_property(self, seed: int, v: list[float]) -> None:
        x, _, a, _ = _clouds(30, 30, 4, seed=seed, weighted=True, dtype=torch.float64)
        shift = torch.tensor(v, dtype=torch.float64)
        # abs: float64 cdist by matrix products is accurate to ~1e-8 at coincident points
        assert float(ExactDistance()(x, x + shift, a, a)) == pytest.approx(
            float(shift.norm()), rel=1e-9, abs=1e-7
        )

    def test_gradient_wrt_x_matches_finite_differences(self) -> None:
        x, y, a, b = _clouds(6, 5, 3, seed=15, weighted=True, dtype=torch.float64)
        est = ExactDistance()
        assert torch.autograd.gradcheck(
            lambda z: est(z, y, a, b), (x.requires_grad_(True),), eps=1e-6, atol=1e-6
        )

    def test_gradient_wrt_a_is_a_directional_derivative(self) -> None:
        x, y, a, b = _clouds(8, 7, 3, seed=16, weighted=True, dtype=torch.float64)
        est = ExactDistance()
        ar = a.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad(est(x, y, ar, b), ar)
        direction = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        direction -= direction.mean()  # stay on {sum(a) = sum(b)}
        t = 1e-6
        fd = (float(est(x, y, a + t * direction, b)) - float(est(x, y, a - t * direction, b))) / (2 * t)
        assert fd == pytest.approx(float(ga @ direction), rel=1e-5, abs=1e-8)

    def test_joint_plan_keeps_labels_and_marginals(self) -> None:
        x, y, lx, ly = _labelled(80, 6, 4, seed=17)
        g = torch.Generator().manual_seed(17)
        a = torch.rand(80, generator=g) + 0.2
        a = (a / a.sum()).double()
        b = _matching_target_weights(a, lx.double(), ly.double())
        cost = torch.cdist(x.double(), y.double()) + LAMBDA * torch.cdist(lx.double(), ly.double())
        plan, info = emd_plan(cost, a, b)
        assert info["converged"] and not plan.requires_grad
        cross = lx.double() @ ly.double().T == 0  # (n, m) pairs with different labels
        assert float(plan[cross].sum()) < 1e-15
        torch.testing.assert_close(plan.sum(1), a, rtol=0, atol=1e-12)
        torch.testing.assert_close(plan.sum(0), b, rtol=0, atol=1e-12)
        value = ExactDistance()(x.double(), y.double(), a, b, lx, ly)
        assert float(value) == pytest.approx(info["cost"], rel=1e-9)

    def test_large_label_cost_only_adds_the_mismatch(self) -> None:
        # W(λ) = W(λ₀) + (λ − λ₀)√2·δ for λ₀√2 ≥ 2·min(diam x, diam y): the identity SinkhornDistance uses.
        x, y, lx, ly = _labelled(60, 5, 3, seed=18)
        a = torch.full((60,), 1 / 60, dtype=torch.float64)
        a[:10] *= 2
        a = a / a.sum()
        x, y = x.double(), y.double()
        delta = 0.5 * float((label_marginals(a, lx.double()) - 1 / 3).abs().sum())
        lam0 = SQRT2 * min(feature_diameter(x, x), feature_diameter(y, y))
        est = ExactDistance()
        low, high = float(est(x, y, a, None, lx, ly, lam0)), float(est(x, y, a, None, lx, ly, LAMBDA))
        assert high - low == pytest.approx((LAMBDA - lam0) * SQRT2 * delta, rel=1e-9)

    def test_vector_convention_matches_authors_cost(self) -> None:
        x, y, lx, ly = _labelled(50, 4, 3, seed=19, soft=True)
        est = ExactDistance(soft_labels="vector")
        value = est(x.double(), y.double(), None, None, lx, ly, 10.0)
        assert est.diagnostics["path"] == "joint"
        assert float(value) == pytest.approx(
            _reference_w1(x, y, None, None, lx, ly, 10.0, "vector"), rel=1e-9
        )

    def test_too_many_points(self) -> None:
        x, y, _, _ = _clouds(150, 150, 2, seed=20)
        with pytest.raises(ValueError, match=r"max_points = 100.*'sinkhorn'.*'auto'"):
            ExactDistance(max_points=100)(x, y)

    def test_non_convergence_is_reported_once(self) -> None:
        x, y, _, _ = _clouds(300, 300, 5, seed=21)
        est = ExactDistance(max_iter=5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est(x, y)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(messages) == 1 and "did not converge" in messages[0]
        assert est.diagnostics["converged"] is False
        assert "numItermax" in est.diagnostics["warning"]
        assert est.diagnostics["subproblems"][0]["result_code"] == 3

    def test_emd_plan_matches_pot(self) -> None:
        import ot

        x, y, a, b = _clouds(40, 30, 3, seed=22, weighted=True, dtype=torch.float64)
        cost = torch.cdist(x, y)
        plan, info = emd_plan(cost, a, b)
        assert info["cost"] == pytest.approx(float(ot.emd2(a, b, cost)), rel=1e-12)
        assert plan.dtype == cost.dtype and plan.shape == (40, 30)
        with pytest.raises(ValueError, match="total masses differ"):
            emd_plan(cost, a, 2 * b)
        with pytest.warns(UserWarning, match="did not converge"):
            _, info = emd_plan(cost, a, b, max_iter=3)
        assert info["converged"] is False


class TestSinkhornDistance(DistanceEstimatorTests):
    rtol_random = 0.03
    rtol_closed_form = 0.005  # translated cloud measured 0.14%
    rtol_joint = 3e-4  # measured 1.5e-5 .. 8e-5: the λ part is exact, the feature part within ~3%

    def make(self) -> DistanceEstimator:
        return SinkhornDistance()

    def test_blur_is_relative_to_the_data(self) -> None:
        x, y, _, _ = _clouds(50, 50, 6, seed=23)
        est = SinkhornDistance(blur=0.02)
        est(x, y)
        assert est.diagnostics["scale"] == pytest.approx(data_scale(x, y))
        assert est.diagnostics["blur"] == pytest.approx(0.02 * data_scale(x, y))
        assert est.diagnostics["backend"] == "tensorized"
        est(10 * x, 10 * y)
        assert est.diagnostics["blur"] == pytest.approx(0.2 * data_scale(x, y), rel=1e-5)

    def test_data_scale_definition(self) -> None:
        x, y, _, _ = _clouds(30, 20, 3, seed=24, dtype=torch.float64)
        z = torch.cat([x, y])
        w = torch.cat(
            [torch.full((30,), 1 / 60, dtype=torch.float64), torch.full((20,), 1 / 40, dtype=torch.float64)]
        )
        sq = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        mean_sq_pair = (w[:, None] * w[None] * sq).sum()
        assert data_scale(x, y) == pytest.approx(float(mean_sq_pair.sqrt()), rel=1e-9)

    def test_gradient_close_to_exact(self) -> None:
        x, y, _, _ = _clouds(50, 40, 3, seed=1, dtype=torch.float64)
        grads = []
        for est in (ExactDistance(), SinkhornDistance()):
            xr = x.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(est(xr, y), xr)[0])
        cosine = float((grads[0] * grads[1]).sum() / grads[0].norm() / grads[1].norm())
        assert cosine > 0.85  # measured 0.94

    def test_joint_feature_part(self) -> None:
        x, y, lx, ly = _labelled(60, 5, 3, seed=10)
        a = torch.full((60,), 1 / 60)
        a[:10] *= 2
        a = a / a.sum()
        delta = 0.5 * float((label_marginals(a.double(), lx.double()) - 1 / 3).abs().sum())
        est = SinkhornDistance()
        value = float(est(x.double(), y.double(), a.double(), None, lx, ly))
        reference = _reference_w1(x, y, a, None, lx, ly)
        # Known limitation (docstring): the feature part is underestimated when class masses differ,
        # measured −20% here; the λ part is exact.
        feature_part = reference - LAMBDA * SQRT2 * delta
        assert value - LAMBDA * SQRT2 * delta == pytest.approx(feature_part, rel=0.25)
        assert est.diagnostics["subproblems"][0]["effective_label_cost"] < LAMBDA

    def test_small_label_cost_joint(self) -> None:
        x, y, lx, ly = _labelled(100, 5, 3, seed=25)
        est = SinkhornDistance(blur=1e-3)
        value = float(est(x, y, None, None, lx, ly, 0.1))
        assert est.diagnostics["path"] == "joint" and "diameter" in est.diagnostics["path_reason"]
        assert value == pytest.approx(_reference_w1(x, y, None, None, lx, ly, 0.1), rel=0.015)

    def test_one_dimensional_needs_slow_annealing(self) -> None:
        # p = 1 in 1-D under-converges with one Sinkhorn step per ε: the default blur/scaling give
        # 0.242 for 0.315 (−23%); a finer blur with scaling 0.99 gives −2.9%.
        x, y, a, b = _clouds(120, 90, 1, seed=4, weighted=True, dtype=torch.float64)
        expected = scipy.stats.wasserstein_distance(x[:, 0], y[:, 0], a, b)
        value = SinkhornDistance(blur=1e-4, scaling=0.99)(x, y, a, b)
        assert float(value) == pytest.approx(expected, rel=0.05)

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="backend"):
            SinkhornDistance(backend="multiscale")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="scaling"):
            SinkhornDistance(scaling=1.0)


class TestSinkhornFineBlur(DistanceEstimatorTests):
    rtol_random = 0.015
    rtol_closed_form = 0.005
    rtol_joint = 3e-4

    def make(self) -> DistanceEstimator:
        return SinkhornDistance(blur=1e-3)


class TestAutoDistance(DistanceEstimatorTests):
    rtol_random = 1e-6
    rtol_closed_form = 1e-6
    rtol_joint = 1e-6
    rtol_1d = 1e-9

    def make(self) -> DistanceEstimator:
        return AutoDistance()

    def test_chooses_exact_when_small_and_sinkhorn_when_large(self) -> None:
        x, y, _, _ = _clouds(30, 20, 3, seed=26)
        small = AutoDistance()
        small(x, y)
        assert small.diagnostics["solver"] == "exact" and small.diagnostics["scale"] is None
        large = AutoDistance(exact_max_pairs=100)
        large(x, y)
        assert large.diagnostics["solver"] == "sinkhorn"
        assert large.diagnostics["backend"] == "tensorized"  # CPU
        assert large.diagnostics["blur"] == pytest.approx(0.01 * data_scale(x, y))

    def test_computes_the_sinkhorn_scale_only_when_sinkhorn_runs(self, monkeypatch) -> None:
        import tta.distances._types as sinkhorn  # the call context computes the data scale

        calls = []
        monkeypatch.setattr(sinkhorn, "data_scale", lambda *a: calls.append(1) or data_scale(*a))
        x, y, _, _ = _clouds(30, 20, 3, seed=26)
        AutoDistance()(x, y)
        assert calls == []  # every subproblem exact: no pass over the clouds for Sinkhorn's scale
        large = AutoDistance(exact_max_pairs=100)
        large(x, y)
        large(x, y)
        assert calls == [1, 1]  # once per call that runs Sinkhorn
        assert large.diagnostics["scale"] == pytest.approx(data_scale(x, y))

    def test_decides_per_subproblem(self) -> None:
        x, y, lx, ly = _labelled(40, 3, 2, seed=27)
        keep = torch.cat([torch.arange(0, 40, 2), torch.arange(1, 12, 2)])  # 20 of class 0, 6 of class 1
        x, y, lx, ly = x[keep], y[keep], lx[keep], ly[keep]
        est = AutoDistance(exact_max_pairs=100)
        est(x, y, None, None, lx, ly)
        assert est.diagnostics["path"] == "per_label" and est.diagnostics["solver"] == "exact+sinkhorn"
        by_label = {s["label"]: s["solver"] for s in est.diagnostics["subproblems"]}
        assert by_label == {0: "sinkhorn", 1: "exact"}


# ------------------------------------------------------------------------------- pure helpers
def test_label_marginals() -> None:
    a = torch.tensor([0.2, 0.3, 0.5])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    torch.testing.assert_close(label_marginals(a, labels), torch.tensor([0.35, 0.65]))


def test_choose_label_path() -> None:
    lx = torch.eye(2)[torch.tensor([0, 0, 1, 1])]
    a = b = torch.full((4,), 0.25)
    assert choose_label_path(a, b, lx, lx, LAMBDA, 10.0).path == "per_label"
    assert choose_label_path(a, b, lx, lx, 1.0, 10.0).path == "joint"  # λ√2 < diameter
    skew = torch.tensor([0.4, 0.2, 0.2, 0.2])
    decision = choose_label_path(skew, b, lx, lx, LAMBDA, 10.0)
    assert decision.path == "joint" and "class masses differ" in decision.reason
    tiny = skew.double() * 1e-7 + a.double() * (1 - 1e-7)  # within the 1e-6 tolerance
    assert choose_label_path(tiny, b, lx, lx, LAMBDA, 10.0).path == "per_label"
    soft = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert choose_label_path(a, b, soft, lx, LAMBDA, 10.0).path == "per_label"
    assert choose_label_path(a, b, soft, lx, LAMBDA, 10.0, soft_labels="vector").path == "joint"


def test_feature_diameter_bounds_pairwise_distances() -> None:
    x, y, _, _ = _clouds(30, 20, 4, seed=28)
    assert feature_diameter(x, y) >= float(torch.cdist(torch.cat([x, y]), torch.cat([x, y])).max()) - 1e-5


def test_label_row_sums_checked() -> None:
    x, y, _, _ = _clouds(4, 4, 2, seed=29)
    bad = torch.full((4, 2), 0.6)
    with pytest.raises(ValueError, match="must sum to 1"):
        ExactDistance()(x, y, None, None, bad, torch.eye(2)[torch.tensor([0, 1, 0, 1])])


# ----------------------------------------------------------------------------- registry, imports
def test_registry_and_factory() -> None:
    assert {"exact", "sinkhorn", "auto"} <= set(DISTANCES.names())
    est = create_distance("exact", max_iter=None, max_points=50)
    assert isinstance(est, ExactDistance) and est.max_points == 50 and est.max_iter == 1_000_000
    assert create_distance(est) is est
    assert isinstance(create_distance("sinkhorn", blur=0.05), SinkhornDistance)
    with pytest.raises(PluginNotFoundError, match="sinkhorn"):
        create_distance("sinkorn")


def test_import_is_light() -> None:
    code = (
        "import sys, tta.distances; "
        "heavy = [m for m in ('ot', 'geomloss', 'pykeops') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


# ------------------------------------------------------------------------------ KeOps backend
def _online_vs_tensorized(device: str) -> None:
    x, y, lx, ly = (t.to(device) for t in _labelled(60, 5, 3, seed=30))
    a = torch.full((60,), 1 / 60, device=device)
    a[:10] *= 2
    a = a / a.sum()
    for inputs in ((x, y), (x, y, a, None, lx, ly)):  # unlabelled, then joint (mismatched class masses)
        online, tensorized = SinkhornDistance(backend="online"), SinkhornDistance(backend="tensorized")
        value = online(*inputs)
        assert online.diagnostics["backend"] == "online"
        # float32 tensorized distances use |x|² + |y|² − 2x·y (≈1e-3 error at coincident points), KeOps
        # direct differences: measured 4e-4 relative apart.
        assert float(value) == pytest.approx(float(tensorized(*inputs)), rel=2e-3)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    """Every estimator gives on CUDA what it gives on the CPU (tensors created on the inputs' device)."""
    inputs = _labelled(60, 5, 3, seed=31)
    for name in ("exact", "sinkhorn", "subsample"):
        est = create_distance(name)
        cpu = float(est(*inputs[:2], None, None, *inputs[2:]))
        cuda = float(est(*(t.cuda() for t in inputs[:2]), None, None, *(t.cuda() for t in inputs[2:])))
        assert cuda == pytest.approx(cpu, rel=1e-4), name


@pytest.mark.gpu
def test_online_backend_cuda() -> None:
    from tta._keops_check import keops_status

    works, detail = keops_status("cuda")
    if not works:  # a broken KeOps install segfaults: the check runs it in a child process
        pytest.skip(f"KeOps does not work on this CUDA set-up: {detail}")
    _online_vs_tensorized("cuda")
    est = SinkhornDistance(backend="auto")
    est(torch.randn(50, 3, device="cuda"), torch.randn(40, 3, device="cuda"))
    assert est.diagnostics["backend"] == "online"


@pytest.mark.skipif(
    os.environ.get("TTA_TEST_KEOPS_CPU") != "1",
    reason="KeOps compiles each new formula once, ~15 s per formula on 2 CPU cores (measured 27 s for the "
    "joint cost and its gradient), over this file's budget; set TTA_TEST_KEOPS_CPU=1 to run",
)
def test_online_backend_cpu() -> None:
    _online_vs_tensorized("cpu")
