"""``DistanceEstimatorTests``: the pytest mixin a W₁ estimator's test class subclasses.

Subclass it, set :meth:`~DistanceEstimatorTests.make` and the tolerances, and pytest collects every
check below for the estimator (closed forms, POT's exact EMD, the label paths, gradients, errors) plus
the whole :func:`~tta.testing.check_distance_estimator` contract::

    from tta.testing import DistanceEstimatorTests

    class TestMyDistance(DistanceEstimatorTests):
        rtol_random = 0.03
        rtol_closed_form = 0.03
        rtol_joint = 0.03

        def make(self):
            return MyDistance()

Needs pytest and POT (``pip install task-transfer-analysis[test]``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from tta.distances import DEFAULT_LABEL_COST, DistanceEstimator, feature_diameter, label_marginals
from tta.testing._contract import check_distance_estimator
from tta.testing._oracles import labelled_clouds, matching_target_weights, random_clouds, reference_w1

__all__ = ["DistanceEstimatorTests"]

_SQRT2 = math.sqrt(2.0)


class DistanceEstimatorTests:
    """Checks every estimator must pass; subclasses set ``make`` and the tolerances.

    Attributes:
        rtol_random: Relative tolerance against ``ot.emd2`` on random clouds (also the contract's
            accuracy tolerance); ``None`` skips the comparisons with POT (an estimator of another
            quantity, e.g. a sliced distance, which only bounds W₁ from below).
        rtol_closed_form: Relative tolerance on a translated cloud and on Dirac masses.
        rtol_joint: Relative tolerance of a labelled value with λ = 1e6 (joint path).
        rtol_1d: Relative tolerance on 1-D clouds against ``scipy.stats.wasserstein_distance``;
            ``None`` skips that test (a documented limitation).
        symmetric: Whether the estimator is symmetric in its two measures.
        deterministic: Whether two calls on the same input agree.
    """

    rtol_random: ClassVar[float | None]
    rtol_closed_form: ClassVar[float]
    rtol_joint: ClassVar[float]
    rtol_1d: ClassVar[float | None] = None
    symmetric: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True

    def make(self) -> DistanceEstimator:
        """A fresh estimator to test."""
        raise NotImplementedError

    def _rtol_vs_pot(self) -> float:
        if self.rtol_random is None:
            pytest.skip("rtol_random is None: this estimator is not compared with exact EMD")
        return self.rtol_random

    def test_contract(self) -> None:
        check_distance_estimator(
            self.make, rtol=self.rtol_random, symmetric=self.symmetric, deterministic=self.deterministic
        )

    @pytest.mark.parametrize("seed", range(15))
    def test_dirac_masses(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        x = 20 * torch.rand(1, 3, generator=g, dtype=torch.float64) - 10
        y = 20 * torch.rand(1, 3, generator=g, dtype=torch.float64) - 10
        if seed == 0:
            y = x.clone()  # the degenerate case: two equal Diracs
        dist = float((x - y).norm())
        # GeomLoss clamps squared distances at 1e-8, hence the 1e-4 absolute floor.
        assert float(self.make()(x, y)) == pytest.approx(dist, rel=self.rtol_closed_form, abs=1e-4)

    def test_translated_cloud(self) -> None:
        x, _, a, _ = random_clouds(200, 150, 5, seed=3, weighted=True)
        v = torch.tensor([0.3, -0.2, 0.1, 0.5, 0.0])
        value = self.make()(x, x + v, a, a)
        assert float(value) == pytest.approx(float(v.norm()), rel=self.rtol_closed_form)

    def test_one_dimensional_vs_scipy(self) -> None:
        if self.rtol_1d is None:
            pytest.skip("1-D is a documented limitation of this estimator (see its docstring)")
        import scipy.stats

        x, y, a, b = random_clouds(120, 90, 1, seed=4, weighted=True, dtype=torch.float64)
        expected = scipy.stats.wasserstein_distance(x[:, 0], y[:, 0], a, b)
        assert float(self.make()(x, y, a, b)) == pytest.approx(expected, rel=self.rtol_1d)

    @pytest.mark.parametrize("d", [5, 64])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_random_clouds_vs_pot(self, d: int, weighted: bool) -> None:
        rtol = self._rtol_vs_pot()
        x, y, a, b = random_clouds(200, 150, d, seed=d + weighted, weighted=weighted)
        est = self.make()
        value = est(x, y, a, b)
        assert value.dtype == torch.float32 and value.dim() == 0
        assert float(value) == pytest.approx(reference_w1(x, y, a, b), rel=rtol)
        assert est.diagnostics["path"] == "unlabelled"
        assert est.diagnostics["n"] == 200 and est.diagnostics["m"] == 150

    def test_total_mass_is_homogeneous(self) -> None:
        x, y, a, b = random_clouds(40, 30, 3, seed=5, weighted=True, dtype=torch.float64)
        est = self.make()
        assert float(est(x, y, 3 * a, 3 * b)) == pytest.approx(3 * float(est(x, y, a, b)), rel=1e-6)

    def test_symmetry(self) -> None:
        if not self.symmetric:
            pytest.skip("the estimator is documented as not symmetric")
        x, y, a, b = random_clouds(60, 40, 4, seed=6, weighted=True, dtype=torch.float64)
        est = self.make()
        assert float(est(x, y, a, b)) == pytest.approx(float(est(y, x, b, a)), rel=1e-6)
        xs, ys, lx, ly = (t.double() for t in labelled_clouds(60, 4, 3, seed=6))
        assert float(est(xs, ys, None, None, lx, ly)) == pytest.approx(
            float(est(ys, xs, None, None, ly, lx)), rel=1e-6
        )

    def test_dtype_follows_x(self) -> None:
        x, y, _, _ = random_clouds(20, 20, 3, seed=7, dtype=torch.float64)
        assert self.make()(x, y).dtype == torch.float64
        assert self.make()(x.float(), y).dtype == torch.float32

    def test_per_label_equals_joint_emd(self) -> None:
        rtol = self._rtol_vs_pot()
        x, y, lx, ly = labelled_clouds(120, 8, 4, seed=8)
        g = torch.Generator().manual_seed(8)
        a = torch.rand(120, generator=g, dtype=torch.float64) + 0.2
        a = a / a.sum()
        b = matching_target_weights(a, lx, ly)
        est = self.make()
        value = est(x, y, a, b, lx, ly)
        assert est.diagnostics["path"] == "per_label"
        assert est.diagnostics["num_subproblems"] == 4
        assert float(value) == pytest.approx(reference_w1(x, y, a, b, lx, ly), rel=rtol)

    def test_soft_labels_per_label_equals_expanded_joint_emd(self) -> None:
        rtol = self._rtol_vs_pot()
        x, y, lx, ly = labelled_clouds(90, 6, 3, seed=9, soft=True)
        a = torch.full((90,), 1 / 90, dtype=torch.float64)
        b = matching_target_weights(a, lx, ly)
        est = self.make()
        value = est(x, y, a, b, lx, ly)
        assert est.diagnostics["path"] == "per_label"
        assert float(value) == pytest.approx(reference_w1(x, y, a, b, lx, ly), rel=rtol)

    def test_mismatched_label_marginals_use_joint_path(self) -> None:
        x, y, lx, ly = labelled_clouds(60, 5, 3, seed=10)
        a = torch.full((60,), 1 / 60)
        a[:10] *= 2
        a = a / a.sum()
        est = self.make()
        value = float(est(x, y, a, None, lx, ly))
        assert est.diagnostics["path"] == "joint"
        delta = 0.5 * float(
            (label_marginals(a, lx) - label_marginals(torch.full((60,), 1 / 60), ly)).abs().sum()
        )
        assert delta > 1e-3
        reference = reference_w1(x, y, a, None, lx, ly)
        # The value is λ√2·(mismatched mass) plus a feature part in [0, diameter].
        assert 0 <= reference - DEFAULT_LABEL_COST * _SQRT2 * delta <= feature_diameter(x, y)
        assert value == pytest.approx(reference, rel=self.rtol_joint)

    def test_gradients_finite(self) -> None:
        x, y, a, b = random_clouds(50, 40, 3, seed=11, weighted=True, dtype=torch.float64)
        x.requires_grad_(True)
        a.requires_grad_(True)
        y.requires_grad_(True)
        gx, gy, ga = torch.autograd.grad(self.make()(x, y, a, b), (x, y, a))
        for g in (gx, gy, ga):
            assert torch.isfinite(g).all() and g.abs().sum() > 0

    def test_gradients_labelled_finite(self) -> None:
        x, y, lx, ly = labelled_clouds(60, 5, 3, seed=12, soft=True)
        a = torch.full((60,), 1 / 60)
        for b in (matching_target_weights(a, lx, ly), None):  # per_label, then joint
            xr, ar, lr = (
                x.clone().requires_grad_(True),
                a.clone().requires_grad_(True),
                lx.clone().requires_grad_(True),
            )
            est = self.make()
            grads = torch.autograd.grad(est(xr, y, ar, b, lr, ly), (xr, ar, lr))
            assert all(torch.isfinite(g).all() for g in grads), est.diagnostics["path"]
            assert grads[1].abs().sum() > 0

    def test_diagnostics_schema(self) -> None:
        x, y, _, _ = random_clouds(20, 25, 3, seed=13)
        est = self.make()
        est(x, y)
        keys = {"estimator", "n", "m", "path", "solver", "converged", "warning", "blur", "scale"}
        keys |= {"num_subproblems", "seconds", "subproblems"}
        assert keys <= set(est.diagnostics)
        assert est.diagnostics["converged"] is True and est.diagnostics["warning"] is None
        assert est.diagnostics["estimator"] == est.name

    def test_errors(self) -> None:
        x, y, a, b = random_clouds(10, 12, 3, seed=14, weighted=True)
        est = self.make()
        with pytest.raises(ValueError, match="total masses differ"):
            est(x, y, a, 2 * b)
        with pytest.raises(ValueError, match="same feature dimension"):
            est(x, torch.randn(12, 4))
        with pytest.raises(ValueError, match=r"weights a must have shape \(10,\)"):
            est(x, y, torch.full((9,), 1 / 9), b)
        with pytest.raises(ValueError, match="nonnegative"):
            est(x, y, a - a.mean(), b - b.mean())
        with pytest.raises(ValueError, match="both x_labels and y_labels"):
            est(x, y, a, b, torch.eye(3)[torch.arange(10) % 3], None)
        with pytest.raises(ValueError, match=r"shape \(num_points, dim\)"):
            est(x[0], y)
