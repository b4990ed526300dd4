"""The sliced-Wasserstein estimator under tta's shared estimator tests (tta.testing).

Subclassing ``DistanceEstimatorTests`` collects the closed-form, label-path, gradient, error and schema
tests, and the whole ``check_distance_estimator`` contract. A sliced distance is a lower bound of W₁,
not an approximation of it, so ``rtol_random = None`` skips the comparisons with POT's exact EMD; the
closed forms (translations, Diracs, the joint label cost) hold in expectation over the projections,
with a Monte-Carlo error of about 1/sqrt(L) (L = 2048 here).
"""

from __future__ import annotations

import pytest

plugin = pytest.importorskip("tta_example_plugin", reason="tta-example-plugin is not installed")

from tta_example_plugin import SlicedWassersteinDistance  # noqa: E402

from tta.testing import DistanceEstimatorTests, check_distance_estimator  # noqa: E402


class TestSlicedWassersteinShared(DistanceEstimatorTests):
    rtol_random = None
    rtol_closed_form = 0.05
    rtol_joint = 0.05
    rtol_1d = 1e-9  # one direction in 1-D: exact

    def make(self) -> SlicedWassersteinDistance:
        return SlicedWassersteinDistance(num_projections=2048, seed=0)


def test_resampling_directions_fails_the_determinism_check():
    """With resample=True two calls use different directions, which the contract reports."""
    make = lambda: SlicedWassersteinDistance(num_projections=64, resample=True)  # noqa: E731
    report = check_distance_estimator(make, raise_on_failure=False)
    assert "determinism" in {c.name for c in report.failures}
    assert check_distance_estimator(lambda: SlicedWassersteinDistance(num_projections=64)).passed
