r"""Pool-relative estimators: NCTI [1]_ and ETran [2]_.

Both combine several terms on different scales by min–max normalising each term across the pool of
candidate models, so a model's score depends on the other candidates and a pool of one is refused.

References:
    .. [1] Z. Wang, Y. Luo, L. Zheng, Z. Huang, M. Baktashmotlagh. "How Far Pre-trained Models Are
       from Neural Collapse on the Target Dataset Informs their Transferability". ICCV 2023.
    .. [2] M. Gholami, M. Akbari, X. Wang, B. Kamranian, Y. Zhang. "ETran: Energy-Based
       Transferability Estimation". ICCV 2023.
    .. [3] C. Thrampoulidis, G. R. Kini, V. Vakilian, T. Behnia. "Imbalance Trouble: Revisiting
       Neural-Collapse Geometry". NeurIPS 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_pool
from tta.estimators._linalg import (
    fisher_directions,
    lda_log_posteriors,
    min_max,
    nuclear_norm,
    pca,
    scatter_matrices,
)
from tta.estimators._sfda import fisher_posteriors

__all__ = ["etran", "ncti", "ncti_terms"]


def _true_class_mean(posteriors: torch.Tensor, y: torch.Tensor) -> float:
    """Mean posterior of the true class."""
    return float(posteriors.gather(1, y[:, None]).mean())


def ncti_terms(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, pca_dim: int = 64
) -> tuple[float, float, float]:
    r"""The three raw neural-collapse terms of NCTI for one model: ``(seli, ncc, vc)``.

    The features are projected on their top ``pca_dim`` principal components; a linear
    discriminant analysis is fitted there with the within-class scatter shrunk towards a scaled
    identity, :math:`\tilde S_w = (1 - \lambda) S_w + \lambda \frac{\operatorname{tr} S_w}{d} I`,
    :math:`\lambda = \max(e^{-\sum_{k \le 32} v_k}, 10^{-10})` with :math:`v_k` the explained
    variances, as in the reference implementation of [1]_. Then

    .. math::
        S_{\mathrm{seli}} = \lVert H W \rVert_*, \qquad
        S_{\mathrm{ncc}} = \frac1n \sum_i p(y_i \mid h_i), \qquad
        S_{\mathrm{vc}} = \log \sum_{c} \lVert P_c \rVert_*,

    with :math:`H` the centred projected features, :math:`W` the top :math:`\min(C-1, d)` Fisher
    directions (:math:`W^\top \tilde S_w W = I`), :math:`p` the LDA posteriors and :math:`P_c` the
    posterior rows ``(n_c, C)`` of class :math:`c`. A larger :math:`S_{\mathrm{seli}}` means closer to
    the simplex-encoded-label-interpolation geometry [3]_; a larger :math:`S_{\mathrm{ncc}}`, a better
    nearest-centre classifier; a larger :math:`S_{\mathrm{vc}}`, less within-class collapse.
    The coefficient :math:`\lambda` is absolute in the variances, so models whose top 32 explained
    variances sum to less than about 23 are shrunk more when their features are scaled down; above
    that :math:`\lambda` sits at its floor and the terms are scale-free.

    Args:
        x: Features ``(n, D)`` (float64).
        y: Compact labels ``(n,)`` in ``[0, C)``.
        num_classes: ``C``.
        pca_dim: Principal components kept (capped at ``min(n, D)``).

    Returns:
        ``(seli, ncc, vc)``.
    """
    h, variances = pca(x, pca_dim)
    d = h.shape[1]
    shrinkage = max(math.exp(-float(variances[:32].sum())), 1e-10)
    priors, means, s_w, s_b = scatter_matrices(h, y, num_classes)
    eye = torch.eye(d, dtype=h.dtype, device=h.device)
    cov = (1.0 - shrinkage) * s_w + shrinkage * float(torch.trace(s_w)) / d * eye
    posteriors = lda_log_posteriors(h, means, priors, cov).exp()
    directions = fisher_directions(s_b, cov, min(num_classes - 1, d))
    seli = nuclear_norm(h @ directions)  # h is centred by the PCA
    ncc = _true_class_mean(posteriors, y)
    vc = math.log(sum(nuclear_norm(posteriors[y == c]) for c in range(num_classes)))
    return seli, ncc, vc


@register_estimator(
    "ncti",
    inputs="pool",
    higher_is_better=True,
    complexity="O(M·(nD·min(n, D) + n·d² + d³)), d = min(64, n, D)",
)
def ncti(features: Sequence[ArrayLike], labels: ArrayLike, *, pca_dim: int = 64) -> list[float]:
    r"""Neural Collapse Transferability Index of each model of a pool.

    With the raw terms of :func:`ncti_terms` min–max normalised across the :math:`M` candidates
    (:math:`\mathcal N(s)_m = (s_m - \min s)/(\max s - \min s)`, 0 when all are equal),

    .. math::
        \mathrm{NCTI}_m = \mathcal N(S_{\mathrm{seli}})_m + \mathcal N(S_{\mathrm{ncc}})_m
        - \mathcal N(S_{\mathrm{vc}})_m \in [-1, 2].

    Cost: per model, PCA :math:`O(nD\min(n, D))` and LDA :math:`O(nd^2 + d^3)` in
    :math:`d = \min(64, n, D)` dimensions.

    Args:
        features: One feature matrix ``(n, D_m)`` per candidate model, same samples in the same
            order; the dimensions may differ.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        pca_dim: Principal components kept per model.

    Returns:
        One NCTI per model, in the order given. Higher is better.

    Raises:
        ValueError: For a pool of fewer than 2 models, ill-formed inputs or fewer than 2 classes.
    """
    mats, y, num_classes = check_pool(features, labels, "ncti")
    terms = [ncti_terms(x, y.to(x.device), num_classes, pca_dim) for x in mats]
    seli, ncc, vc = (min_max(list(t)) for t in zip(*terms))
    return [s + a - v for s, a, v in zip(seli, ncc, vc)]


@register_estimator("etran", inputs="pool", higher_is_better=True, complexity="O(M·(nD² + D³))")
def etran(features: Sequence[ArrayLike], labels: ArrayLike, *, temperature: float = 1.0) -> list[float]:
    r"""ETran (classification form): energy score plus LDA score, each min–max normalised over the pool.

    The energy of a feature vector is :math:`E(f) = -T \log \sum_d e^{f_d / T}`; in-distribution
    samples have low energy, so the energy score is its negated mean, and the LDA score is the mean
    true-class posterior of the regularised Fisher classifier of
    :func:`tta.estimators.fisher_posteriors`:

    .. math::
        S_{\mathrm{en}} = \frac1n \sum_i T \log \sum_d e^{f_{id}/T}, \qquad
        S_{\mathrm{lda}} = \frac1n \sum_i p(y_i \mid f_i), \qquad
        \mathrm{ETran}_m = \mathcal N(S_{\mathrm{en}})_m + \mathcal N(S_{\mathrm{lda}})_m \in [0, 2],

    with :math:`\mathcal N` the min–max normalisation across the pool (0 when all are equal). The
    energy score averages over all samples (the detection variant's SVD term is not included). It
    is not scale-free (the temperature is absolute), so neither is the ranking of a pool whose members
    have different feature scales.

    Cost: per model :math:`O(nD^2 + D^3)`.

    Args:
        features: One feature matrix ``(n, D_m)`` per candidate model, same samples in the same
            order; the dimensions may differ.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        temperature: Energy temperature :math:`T > 0`.

    Returns:
        One ETran score per model, in the order given. Higher is better.

    Raises:
        ValueError: For a pool of fewer than 2 models, ill-formed inputs or fewer than 2 classes.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mats, y, num_classes = check_pool(features, labels, "etran")
    energy = [float((temperature * torch.logsumexp(x / temperature, dim=1)).mean()) for x in mats]
    lda = []
    for x in mats:
        posteriors, _ = fisher_posteriors(x, y.to(x.device), num_classes)
        lda.append(_true_class_mean(posteriors, y.to(x.device)))
    return [e + a for e, a in zip(min_max(energy), min_max(lda))]
