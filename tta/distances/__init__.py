r"""Order-1 Wasserstein distances between weighted, optionally labelled point clouds.

.. math::
    W_1(\mu, \nu) = \min_{\pi \in \Pi(a, b)} \sum_{ij} \pi_{ij}
    \big(\|x_i - y_j\|_2 + \lambda\|l_i - l'_j\|_2\big)

**Layers.** Functions first: :func:`exact_w1`, :func:`sinkhorn_w1`, :func:`auto_w1` and
:func:`subsampled_w1` take two :class:`LabelledMeasure` and return a frozen :class:`W1Result` (the
value and its diagnostics); each is the driver :func:`wasserstein_1` (validation, label paths,
recombination, warnings) over a solver of one balanced problem (:func:`exact_solve`,
:func:`sinkhorn_solve`...). Estimator classes are thin configured wrappers with one hook,
:meth:`DistanceEstimator.solve`, which a plugin implements (checked by :mod:`tta.testing`).

Estimators (registered in :data:`tta.plugins.DISTANCES`): ``"exact"`` (:class:`ExactDistance`, POT's
network simplex), ``"sinkhorn"`` (:class:`SinkhornDistance`, GeomLoss's debiased Sinkhorn with a blur
relative to the data), ``"auto"`` (:class:`AutoDistance`, exact where affordable) and ``"subsample"``
(:class:`SubsampledDistance`, the mean of exact subsample solves with a confidence interval, in bounded
memory, for 10⁵ points and more). ``import tta.distances`` does not import POT, GeomLoss or KeOps; they
load on first use.
"""

from __future__ import annotations

from typing import Any

from tta.distances._auto import AutoDistance, auto_w1
from tta.distances._estimator import DistanceEstimator
from tta.distances._exact import (
    ExactDistance,
    emd_plan,
    exact_solve,
    exact_w1,
    per_label_exact,
    transport_cost,
)
from tta.distances._functional import PerLabelSolver, Solver, wasserstein_1
from tta.distances._geometry import (
    DEFAULT_LABEL_COST,
    MASS_RTOL,
    LabelPath,
    SoftLabels,
    choose_label_path,
    data_scale,
    feature_diameter,
    label_marginals,
    pairwise_distances,
)
from tta.distances._measure import LabelledMeasure, validate_pair
from tta.distances._sinkhorn import SinkhornDistance, resolve_backend, sinkhorn_solve, sinkhorn_w1
from tta.distances._subsample import SubsampledDistance, subsampled_solve, subsampled_w1
from tta.distances._types import CallContext, Solution, SolverReport, TransportProblem, W1Result
from tta.plugins import DISTANCES

__all__ = [
    "DEFAULT_LABEL_COST",
    "MASS_RTOL",
    "AutoDistance",
    "CallContext",
    "DistanceEstimator",
    "ExactDistance",
    "LabelPath",
    "LabelledMeasure",
    "PerLabelSolver",
    "SinkhornDistance",
    "SoftLabels",
    "Solution",
    "Solver",
    "SolverReport",
    "SubsampledDistance",
    "TransportProblem",
    "W1Result",
    "auto_w1",
    "choose_label_path",
    "create_distance",
    "data_scale",
    "emd_plan",
    "exact_solve",
    "exact_w1",
    "feature_diameter",
    "label_marginals",
    "pairwise_distances",
    "per_label_exact",
    "resolve_backend",
    "sinkhorn_solve",
    "sinkhorn_w1",
    "subsampled_solve",
    "subsampled_w1",
    "transport_cost",
    "validate_pair",
    "wasserstein_1",
]


def create_distance(name_or_instance: str | DistanceEstimator, **kwargs: Any) -> DistanceEstimator:
    """A distance estimator from a registered name (``"exact"``, ``"sinkhorn"``, ``"auto"``...).

    Args:
        name_or_instance: A name in :data:`tta.plugins.DISTANCES`, or an estimator, returned unchanged
            (``kwargs`` are then ignored).
        **kwargs: Constructor arguments; ``None`` values are dropped.

    Returns:
        The estimator.

    Raises:
        tta.plugins.PluginNotFoundError: For an unknown name (with close matches).
        TypeError: If ``name_or_instance`` is neither a string nor a :class:`DistanceEstimator`.
    """
    if isinstance(name_or_instance, DistanceEstimator):
        return name_or_instance
    if not isinstance(name_or_instance, str):
        raise TypeError(
            "expected a distance estimator name or a DistanceEstimator, got "
            f"{type(name_or_instance).__name__}"
        )
    return DISTANCES.create(name_or_instance, **kwargs)
