"""Test utilities shipped with tta: the distance-estimator contract and its pytest mixin.

A W₁ estimator (built-in or a plugin's) is checked two ways:

* :func:`check_distance_estimator` runs the contract every estimator meets (identity, nonnegativity,
  symmetry, translation invariance, mass homogeneity, the label paths, determinism, finite gradients,
  errors, the result schema; optionally accuracy against POT) and returns a :class:`ContractReport`,
  raising :class:`ContractViolation` with every failure listed. It needs no pytest; tta's own suite runs
  it on every name in :data:`tta.plugins.DISTANCES`, installed plugins included.
* :class:`DistanceEstimatorTests` is a pytest mixin: subclass it, set ``make`` and the tolerances, and
  pytest collects closed-form, POT-oracle, label-path, gradient and error tests, plus the contract.

The oracles (:func:`reference_w1`, POT in float64) and seeded clouds are public for your own tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tta.testing._contract import CheckResult, ContractReport, ContractViolation, check_distance_estimator
from tta.testing._oracles import labelled_clouds, matching_target_weights, random_clouds, reference_w1

if TYPE_CHECKING:
    from tta.testing._mixin import DistanceEstimatorTests

__all__ = [
    "CheckResult",
    "ContractReport",
    "ContractViolation",
    "DistanceEstimatorTests",
    "check_distance_estimator",
    "labelled_clouds",
    "matching_target_weights",
    "random_clouds",
    "reference_w1",
]


def __getattr__(name: str) -> Any:
    # The mixin imports pytest: load it only when asked for, so the contract works without pytest.
    if name == "DistanceEstimatorTests":
        try:
            from tta.testing._mixin import DistanceEstimatorTests
        except ModuleNotFoundError as err:  # pragma: no cover - pytest is a test dependency
            raise ModuleNotFoundError(
                f"tta.testing.DistanceEstimatorTests needs {err.name}: "
                "pip install 'task-transfer-analysis[test]'"
            ) from err
        return DistanceEstimatorTests
    raise AttributeError(f"module 'tta.testing' has no attribute {name!r}")
