"""The distance-estimator contract (tta.testing.check_distance_estimator) on every registered name.

Parametrised over ``DISTANCES.names()``, so an installed plugin's estimator (the example plugin's
``sliced_wasserstein`` in CI) is checked exactly like the built-ins, with its default arguments. Known
estimators also get the accuracy check against POT with their documented tolerances.
"""

from __future__ import annotations

import pytest
import torch

from tta.distances import DistanceEstimator, ExactDistance, Solution, SolverReport, TransportProblem
from tta.plugins import DISTANCES
from tta.testing import ContractViolation, check_distance_estimator

# Documented accuracy against exact EMD with default arguments (see the estimators' docstrings);
# names not listed (plugins) get the structural contract only.
ACCURACY = {"exact": 1e-6, "auto": 1e-6, "subsample": 1e-6, "sinkhorn": 0.03}


@pytest.mark.parametrize("name", DISTANCES.names())
def test_registered_distance_meets_the_contract(name: str) -> None:
    report = check_distance_estimator(lambda: DISTANCES.create(name), rtol=ACCURACY.get(name))
    assert report.passed
    expected = {"protocol", "dtype", "identity", "nonnegative", "translation", "mass homogeneity"}
    assert expected <= {c.name for c in report.checks}


def test_builtins_are_all_checked() -> None:
    assert {"exact", "sinkhorn", "auto", "subsample"} <= set(DISTANCES.names())


class _Asymmetric(ExactDistance):
    """Breaks symmetry and translation invariance: W plus the mean of the source's first coordinate."""

    name = "asymmetric_test"

    def solve(self, problem: TransportProblem) -> Solution:
        sol = super().solve(problem)
        src = problem.source
        shift = (src.weights * src.points[:, 0]).sum().abs()
        return Solution(sol.value + shift, sol.reports)


class _Constant(DistanceEstimator):
    """Always 1: fails identity, homogeneity still holds (the driver scales), no gradient."""

    name = "constant_test"

    def solve(self, problem: TransportProblem) -> Solution:
        value = problem.source.points.new_ones(()) + 0 * problem.source.points.sum()
        return Solution(value, (SolverReport("constant"),))


def test_contract_reports_every_broken_property() -> None:
    report = check_distance_estimator(_Asymmetric, raise_on_failure=False)
    failed = {c.name for c in report.failures}
    assert {"symmetry", "translation", "identity"} <= failed
    assert "mass homogeneity" not in failed and "protocol" not in failed
    with pytest.raises(ContractViolation, match=r"\[FAIL\] symmetry"):
        check_distance_estimator(_Asymmetric)


def test_contract_catches_a_constant_and_its_missing_gradient() -> None:
    report = check_distance_estimator(_Constant(), raise_on_failure=False)
    failed = {c.name for c in report.failures}
    assert "identity" in failed and "gradients" in failed
    assert "accuracy" not in {c.name for c in report.checks}  # rtol=None skips it
    with pytest.raises(ContractViolation, match="accuracy"):
        check_distance_estimator(_Constant(), rtol=0.1)


def test_contract_accuracy_fails_outside_the_tolerance() -> None:
    class Scaled(ExactDistance):
        name = "scaled_test"

        def solve(self, problem: TransportProblem) -> Solution:
            sol = super().solve(problem)
            return Solution(1.05 * sol.value, sol.reports)

    assert check_distance_estimator(Scaled, rtol=0.1).passed
    report = check_distance_estimator(Scaled, rtol=0.01, raise_on_failure=False)
    assert [c.name for c in report.failures] == ["accuracy"]


def test_contract_reports_a_broken_factory() -> None:
    def broken() -> DistanceEstimator:
        raise RuntimeError("no weights")

    report = check_distance_estimator(broken, raise_on_failure=False)
    assert [c.name for c in report.checks] == ["construct"] and "no weights" in report.checks[0].detail


def test_contract_is_deterministic_across_runs() -> None:
    first = check_distance_estimator(ExactDistance)
    second = check_distance_estimator(ExactDistance)
    strip = lambda r: [(c.name, c.passed) for c in r.checks]  # noqa: E731
    assert strip(first) == strip(second)
    assert torch.get_default_dtype() == torch.float32
