r"""Leave-one-out k-nearest-neighbour accuracy [1]_.

References:
    .. [1] T. Cover, P. Hart. "Nearest Neighbor Pattern Classification". IEEE Transactions on
       Information Theory, 1967.
"""

from __future__ import annotations

from typing import Literal

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_features, check_labels

__all__ = ["knn"]


@register_estimator(
    "knn", inputs="features", higher_is_better=True, complexity="O(n²D + n² log n), O(chunk·n) memory"
)
def knn(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 1,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    chunk_size: int = 1024,
) -> float:
    r"""Leave-one-out accuracy of the k-nearest-neighbour classifier on the target features.

    Each sample is classified by the majority label of its ``k`` nearest other samples,

    .. math::
        \hat y_i = \arg\max_c \#\{j \in N_k(i) : y_j = c\}, \qquad
        \mathrm{kNN} = \frac1n \sum_i [\hat y_i = y_i],

    :math:`N_k(i)` the ``k`` nearest samples to :math:`f_i` other than :math:`i` itself. A vote tie
    goes to the tied class with the nearest neighbour (independent of the class ids); distance
    ties go to the lower sample index. The distance matrix is computed ``chunk_size`` rows at a
    time.

    Cost: :math:`O(n^2 D + n^2 \log n)` time, :math:`O(\text{chunk\_size} \cdot n)` memory.

    Args:
        features: Target features ``(n, D)``.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        k: Neighbours, ``1 <= k <= n - 1``.
        metric: ``"euclidean"`` or ``"cosine"`` (Euclidean on L2-normalised features).
        chunk_size: Rows of the distance matrix held at once.

    Returns:
        Leave-one-out accuracy in :math:`[0, 1]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs or an out-of-range ``k``.
    """
    x = check_features(features)
    n = x.shape[0]
    y, num_classes = check_labels(labels, n, device=x.device)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    # Rank bonus < 1 breaks vote ties towards the class of the nearest neighbour.
    bonus = (k - torch.arange(k, dtype=torch.float64, device=x.device)) / (k + 1)
    correct = 0
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=x.device)
        dist = torch.cdist(x[rows], x)  # (m, n)
        dist[torch.arange(rows.numel(), device=x.device), rows] = float("inf")  # leave self out
        # stable sort: equal distances keep the lower index first
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]  # (m, k)
        votes = torch.zeros(rows.numel(), num_classes, dtype=torch.float64, device=x.device)
        votes.scatter_add_(1, y[order], torch.ones_like(order, dtype=torch.float64))
        first = torch.zeros_like(votes).scatter_reduce_(
            1, y[order], bonus.expand_as(order), reduce="amax", include_self=True
        )
        predicted = (votes + first).argmax(dim=1)
        correct += int((predicted == y[rows]).sum())
    return correct / n
