r"""Optimal-transport conditional entropy: F-OTCE and JC-OTCE [1]_ [2]_.

References:
    .. [1] Y. Tan, Y. Li, S.-L. Huang. "OTCE: A Transferability Metric for Cross-Domain Cross-Task
       Representations". CVPR 2021.
    .. [2] Y. Tan, E. Zhang, Y. Li, S.-L. Huang, X.-P. Zhang. "Transferability-Guided Cross-Domain
       Cross-Task Transfer Learning". IEEE TNNLS 2024 (F-OTCE and JC-OTCE).
    .. [3] D. Alvarez-Melis, N. Fusi. "Geometric Dataset Distances via Optimal Transport".
       NeurIPS 2020.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_features, check_labels
from tta.estimators._nce import conditional_entropy

__all__ = ["f_otce", "jc_otce", "label_distances"]

_log = logging.getLogger(__name__)


def _validate(
    source_features: ArrayLike, source_labels: ArrayLike, target_features: ArrayLike, target_labels: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor, int]:
    xs = check_features(source_features, "source_features")
    xt = check_features(target_features, "target_features")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"source and target features must share their dimension, got {xs.shape[1]} and {xt.shape[1]}"
        )
    ys, cs = check_labels(source_labels, xs.shape[0], "source_labels", device=xs.device)
    yt, ct = check_labels(target_labels, xt.shape[0], "target_labels", device=xs.device)
    return xs, ys, cs, xt.to(xs.device), yt, ct


def _emd(cost: torch.Tensor, num_iter_max: int) -> torch.Tensor:
    """Exact OT plan between uniform weights (POT's network simplex), as a float64 tensor."""
    import ot

    m = np.ascontiguousarray(cost.cpu().numpy())
    a = np.full(m.shape[0], 1.0 / m.shape[0])
    b = np.full(m.shape[1], 1.0 / m.shape[1])
    plan, log = ot.emd(a, b, m, numItermax=num_iter_max, log=True)
    if log.get("warning"):
        raise RuntimeError(f"ot.emd did not reach optimality: {log['warning']} (raise num_iter_max)")
    return torch.as_tensor(plan, dtype=torch.float64)


def _sq_euclidean(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    d = (xs * xs).sum(1)[:, None] + (xt * xt).sum(1)[None, :] - 2 * xs @ xt.T
    return d.clamp_min(0.0)


def _otce_score(plan: torch.Tensor, ys: torch.Tensor, cs: int, yt: torch.Tensor, ct: int) -> float:
    """:math:`-H(Y_t | Y_s)` of the joint label distribution read off the plan."""
    joint = torch.zeros(ct, cs, dtype=torch.float64)
    rows = yt.cpu()[None, :].expand_as(plan)
    cols = ys.cpu()[:, None].expand_as(plan)
    joint.index_put_((rows.reshape(-1), cols.reshape(-1)), plan.reshape(-1), accumulate=True)
    return -conditional_entropy(joint / joint.sum())


def label_distances(
    xs: torch.Tensor,
    ys: torch.Tensor,
    cs: int,
    xt: torch.Tensor,
    yt: torch.Tensor,
    ct: int,
    num_iter_max: int = 1_000_000,
) -> torch.Tensor:
    r"""Squared-Wasserstein distances ``(C_s, C_t)`` between class-conditional feature distributions.

    .. math::
        W(a, b) = \min_{\pi \in \Pi(U_a, U_b)} \sum_{i, j} \pi_{ij} \lVert x^s_i - x^t_j\rVert^2,

    :math:`U_a` the uniform distribution on the source samples of class :math:`a`, :math:`U_b` on
    the target samples of class :math:`b` (exact OT, POT's ``ot.emd``), as in [3]_.
    """
    out = torch.zeros(cs, ct, dtype=torch.float64)
    for a in range(cs):
        xa = xs[ys == a]
        for b in range(ct):
            xb = xt[yt == b]
            cost = _sq_euclidean(xa, xb)
            out[a, b] = float((_emd(cost, num_iter_max) * cost.cpu()).sum())
    return out


@register_estimator(
    "f_otce",
    inputs="pair",
    higher_is_better=True,
    complexity="exact OT on n_s × n_t: O(n_s·n_t·D) cost, network simplex ~O(n³ log n) worst case",
)
def f_otce(
    source_features: ArrayLike,
    source_labels: ArrayLike,
    target_features: ArrayLike,
    target_labels: ArrayLike,
    *,
    num_iter_max: int = 1_000_000,
) -> float:
    r"""F-OTCE: negative conditional entropy of target given source labels under the OT coupling.

    The optimal coupling :math:`\pi` between the uniform empirical distributions of the source and
    target features for the squared Euclidean cost :math:`c(x^s_i, x^t_j) = \lVert x^s_i - x^t_j\rVert^2`
    (exact, POT's ``ot.emd``) induces a joint label distribution, and

    .. math::
        P(y_s, y_t) = \sum_{i : y^s_i = y_s} \sum_{j : y^t_j = y_t} \pi_{ij}, \qquad
        \mathrm{F\text{-}OTCE} = -H(Y_t \mid Y_s)
        = \sum_{y_s, y_t} P(y_s, y_t) \log \frac{P(y_s, y_t)}{P(y_s)}.

    It is 0 (the best) when the coupling maps each source class into a single target class, e.g.
    for identical source and target sets (the coupling is then a permutation).

    Cost: the :math:`n_s \times n_t` cost matrix, :math:`O(n_s n_t D)` time and :math:`O(n_s n_t)`
    memory, then the network simplex (worst case about :math:`O(n^3 \log n)`). The sizes and the
    solver are logged at DEBUG level.

    Args:
        source_features: Source features ``(n_s, D)``.
        source_labels: Source labels ``(n_s,)``, integers in ``[0, C_s)``.
        target_features: Target features ``(n_t, D)``, same feature space.
        target_labels: Target labels ``(n_t,)``, integers in ``[0, C_t)``.
        num_iter_max: Network-simplex iteration cap; reaching it raises instead of returning a
            sub-optimal coupling.

    Returns:
        F-OTCE in :math:`[-\log C_t, 0]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs or mismatched feature dimensions.
        RuntimeError: When the solver stops before optimality.
    """
    xs, ys, cs, xt, yt, ct = _validate(source_features, source_labels, target_features, target_labels)
    _log.debug("f_otce: exact OT (ot.emd) with n_s=%d, n_t=%d, D=%d", xs.shape[0], xt.shape[0], xs.shape[1])
    plan = _emd(_sq_euclidean(xs, xt), num_iter_max)
    return _otce_score(plan, ys, cs, yt, ct)


@register_estimator(
    "jc_otce",
    inputs="pair",
    higher_is_better=True,
    complexity="F-OTCE plus C_s·C_t class-pair OT problems",
)
def jc_otce(
    source_features: ArrayLike,
    source_labels: ArrayLike,
    target_features: ArrayLike,
    target_labels: ArrayLike,
    *,
    label_weight: float = 1.0,
    num_iter_max: int = 1_000_000,
) -> float:
    r"""JC-OTCE: F-OTCE with a coupling of the joint (feature, label) distributions.

    The ground cost adds to the feature cost a distance between the labels, the squared-Wasserstein
    distance between their class-conditional feature distributions (:func:`label_distances`),

    .. math::
        c\big((x^s_i, y^s_i), (x^t_j, y^t_j)\big) = \lVert x^s_i - x^t_j\rVert^2
        + \lambda\, W(y^s_i, y^t_j),

    and the score is :math:`-H(Y_t \mid Y_s)` under the optimal coupling for that cost, as in
    :func:`f_otce`. Identical source and target sets give 0 (the best).

    Cost: :math:`C_s C_t` class-pair OT problems for the label distances, then one
    :math:`n_s \times n_t` OT problem; solver ``ot.emd`` (sizes logged at DEBUG level).

    Args:
        source_features: Source features ``(n_s, D)``.
        source_labels: Source labels ``(n_s,)``, integers in ``[0, C_s)``.
        target_features: Target features ``(n_t, D)``, same feature space.
        target_labels: Target labels ``(n_t,)``, integers in ``[0, C_t)``.
        label_weight: Weight :math:`\lambda \ge 0` of the label distance.
        num_iter_max: Network-simplex iteration cap per OT problem.

    Returns:
        JC-OTCE in :math:`[-\log C_t, 0]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs, mismatched dimensions or ``label_weight < 0``.
        RuntimeError: When a solver stops before optimality.
    """
    if label_weight < 0:
        raise ValueError(f"label_weight must be >= 0, got {label_weight}")
    xs, ys, cs, xt, yt, ct = _validate(source_features, source_labels, target_features, target_labels)
    _log.debug(
        "jc_otce: exact OT (ot.emd) with n_s=%d, n_t=%d, D=%d, %d class pairs",
        xs.shape[0],
        xt.shape[0],
        xs.shape[1],
        cs * ct,
    )
    labels_cost = label_distances(xs, ys, cs, xt, yt, ct, num_iter_max).to(xs.device)
    cost = _sq_euclidean(xs, xt) + label_weight * labels_cost[ys][:, yt]
    plan = _emd(cost, num_iter_max)
    return _otce_score(plan, ys, cs, yt, ct)
