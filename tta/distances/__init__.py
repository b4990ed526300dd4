r"""Order-1 Wasserstein distances between weighted, optionally labelled point clouds.

.. math::
    W_1(\mu, \nu) = \min_{\pi \in \Pi(a, b)} \sum_{ij} \pi_{ij}
    \big(\|x_i - y_j\|_2 + \lambda\|l_i - l'_j\|_2\big)

Estimators (registered in :data:`tta.plugins.DISTANCES`): ``"exact"`` (:class:`ExactDistance`, POT's
network simplex), ``"sinkhorn"`` (:class:`SinkhornDistance`, GeomLoss's debiased Sinkhorn with a blur
relative to the data), ``"auto"`` (:class:`AutoDistance`, exact where affordable) and ``"subsample"``
(:class:`SubsampledDistance`, the mean of exact subsample solves with a confidence interval, in bounded
memory, for 10⁵ points and more). ``import tta.distances`` does not import POT, GeomLoss or KeOps; they
load on first use.
"""

from __future__ import annotations

from typing import Any

from tta.distances.auto import AutoDistance
from tta.distances.base import (
    DEFAULT_LABEL_COST,
    DistanceEstimator,
    LabelPath,
    choose_label_path,
    feature_diameter,
    label_marginals,
    pairwise_distances,
)
from tta.distances.exact import ExactDistance, emd_plan, transport_cost
from tta.distances.sinkhorn import SinkhornDistance, data_scale
from tta.distances.subsample import SubsampledDistance
from tta.plugins import DISTANCES

__all__ = [
    "DEFAULT_LABEL_COST",
    "AutoDistance",
    "DistanceEstimator",
    "ExactDistance",
    "LabelPath",
    "SinkhornDistance",
    "SubsampledDistance",
    "choose_label_path",
    "create_distance",
    "data_scale",
    "emd_plan",
    "feature_diameter",
    "label_marginals",
    "pairwise_distances",
    "transport_cost",
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
