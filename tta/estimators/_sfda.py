r"""Self-challenging Fisher Discriminant Analysis (SFDA) [1]_.

The regularisation follows the reference implementation of [1]_ (``SFDA`` and ``SFDA_Score`` in
``metrics.py`` of TencentARC/SFDA): the within-class scatter is shrunk towards
:math:`\frac{\operatorname{tr} S_w}{D} I` (the paper's text writes :math:`I`), with a coefficient
set from the largest eigenvalue of :math:`S_w` on the first fit and reused for the refit.

References:
    .. [1] W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo. "Not All Models Are
       Equal: Predicting Model Transferability in a Self-challenging Fisher Space". ECCV 2022.
"""

from __future__ import annotations

import math

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_features, check_labels
from tta.estimators._linalg import class_stats, pca, pinv_psd, scatter_matrices

__all__ = ["fisher_posteriors", "fisher_shrinkage", "sfda"]

#: Floor of the adaptive shrinkage coefficient, as in the reference implementation.
MIN_SHRINKAGE = 1e-10


def _top_eigenvalue(a: torch.Tensor, steps: int = 3) -> float:
    r"""The reference implementation's estimate of :math:`\lambda_{\max}(A)` for a symmetric PSD ``A``.

    ``steps`` rounds of two power-iteration products started from the row sums,
    :math:`v \leftarrow A u/\lVert A u\rVert`, :math:`u \leftarrow A v/\lVert A v\rVert`, then
    :math:`u^\top A v`. When the start or an iterate vanishes (e.g. zero row sums) the exact
    eigenvalue is used instead.
    """
    u = a.sum(dim=1)
    v = u
    for _ in range(steps):
        av = a @ u
        norm = torch.linalg.vector_norm(av)
        if not bool(norm > 0):
            return float(torch.linalg.eigvalsh((a + a.T) / 2)[-1])
        v = av / norm
        au = a @ v
        norm = torch.linalg.vector_norm(au)
        if not bool(norm > 0):
            return float(torch.linalg.eigvalsh((a + a.T) / 2)[-1])
        u = au / norm
    return float(u @ a @ v)


def fisher_shrinkage(s_w: torch.Tensor) -> float:
    r"""The adaptive shrinkage coefficient of [1]_: :math:`\max(e^{-5\hat\lambda_{\max}(S_w)}, 10^{-10})`.

    :math:`\hat\lambda_{\max}` is the reference implementation's three-step power-iteration estimate
    (within a few percent of the exact eigenvalue). The coefficient is *not* scale-free: features
    scaled by :math:`c` scale :math:`\lambda_{\max}(S_w)` by :math:`c^2`, so features whose within-class
    scatter is small (:math:`\lambda_{\max}(S_w) \lesssim 1`) are regularised much more strongly; once
    :math:`e^{-5\lambda_{\max}}` is negligible the score no longer depends on the scale.
    """
    return max(math.exp(-5.0 * _top_eigenvalue(s_w)), MIN_SHRINKAGE)


def _shrunk_lda_log_posteriors(
    x: torch.Tensor, means: torch.Tensor, priors: torch.Tensor, cov: torch.Tensor
) -> torch.Tensor:
    """LDA log posteriors ``(n, C)`` with the exact inverse of a positive-definite shared covariance.

    The shrunk scatter is positive definite whenever the shrinkage and the trace are positive; its
    inverse is then taken exactly (Cholesky), as the reference implementation's full set of
    generalised eigenvectors does, rather than a pseudo-inverse that would drop tiny eigenvalues. A
    singular matrix (no shrinkage and a singular :math:`S_w`) falls back to the pseudo-inverse.
    """
    chol, info = torch.linalg.cholesky_ex((cov + cov.T) / 2)
    if int(info) == 0:
        prec_means = torch.cholesky_solve(means.T, chol).T  # (C, D)
    else:
        prec_means = means @ pinv_psd(cov)
    logits = x @ prec_means.T - 0.5 * (prec_means * means).sum(dim=1) + torch.log(priors)
    return torch.log_softmax(logits, dim=1)


def fisher_posteriors(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, shrinkage: float | None = None
) -> tuple[torch.Tensor, float]:
    r"""Class posteriors ``(n, C)`` of regularised Fisher discriminant analysis, on ``x`` itself.

    The within-class scatter :math:`S_w` (:math:`1/n`) is shrunk towards the scaled identity,

    .. math::
        \tilde S_w = (1 - \lambda) S_w + \lambda \frac{\operatorname{tr} S_w}{D} I, \qquad
        \lambda = \max\!\big(e^{-5\,\hat\lambda_{\max}(S_w)}, 10^{-10}\big)

    (:func:`fisher_shrinkage`, unless ``shrinkage`` is given), and the posteriors are those of the
    Gaussian classifier with shared covariance :math:`\tilde S_w`, class means :math:`\mu_c` and
    priors :math:`\pi_c = n_c/n`:
    :math:`p(c \mid x) \propto \pi_c \exp(x^\top \tilde S_w^{-1}\mu_c - \frac12 \mu_c^\top
    \tilde S_w^{-1}\mu_c)`. These equal the posteriors of the reference implementation of [1]_,
    computed there in the Fisher space of all :math:`D` generalised eigenvectors of
    :math:`(S_b, \tilde S_w)` (:math:`W W^\top = \tilde S_w^{-1}`). For a fixed :math:`\lambda` they
    are invariant to scaling the features, since :math:`\tilde S_w` then scales like :math:`S_w`.

    Args:
        x: Features ``(n, D)`` (float64).
        y: Compact labels ``(n,)`` in ``[0, C)``.
        num_classes: ``C``.
        shrinkage: :math:`\lambda \in [0, 1]`; ``None`` computes it from :math:`S_w`.

    Returns:
        ``(posteriors, shrinkage)``: the posteriors ``(n, C)`` and the :math:`\lambda` used.
    """
    priors, means, s_w, _ = scatter_matrices(x, y, num_classes)
    if shrinkage is None:
        shrinkage = fisher_shrinkage(s_w)
    d = x.shape[1]
    target = float(torch.trace(s_w)) / d
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cov = (1.0 - shrinkage) * s_w + shrinkage * target * eye
    return _shrunk_lda_log_posteriors(x, means, priors, cov).exp(), shrinkage


@register_estimator(
    "sfda", inputs="features", higher_is_better=True, complexity="O(nD² + D³), twice (plus PCA)"
)
def sfda(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    pca_dim: int | None = None,
    soften: bool = True,
    shrinkage: float | None = None,
) -> float:
    r"""SFDA: mean true-class posterior of a Fisher classifier refitted on self-challenged features.

    1. Fit the regularised Fisher classifier of :func:`fisher_posteriors` (shrinkage coefficient
       :math:`\lambda` from :func:`fisher_shrinkage` unless ``shrinkage`` is given) and take the
       posteriors :math:`p_i = p(y_i \mid f_i)`; with ``soften`` they are first passed through a
       second softmax, :math:`p_i \leftarrow \operatorname{softmax}(p(\cdot \mid f_i))_{y_i}`, as in
       the reference implementation of [1]_, which keeps the mixing weights away from 0 and 1.
    2. ConfMix: move every sample towards the other classes in proportion to its uncertainty,

       .. math::
           \tilde f_i = p_i f_i + (1 - p_i)\, \bar\mu_{-y_i}, \qquad
           \bar\mu_{-c} = \frac{1}{C-1} \sum_{c' \ne c} \mu_{c'}.

    3. Refit on :math:`\tilde f` with the **same** :math:`\lambda` (the shrinkage target
       :math:`\operatorname{tr}\tilde S_w / D` is that of the mixed features), as the reference
       implementation does, and return

       .. math::
           \mathrm{SFDA} = \frac1n \sum_i p(y_i \mid \tilde f_i).

    With a given ``shrinkage`` the score is invariant to scaling the features. With the adaptive
    coefficient it is too once :math:`e^{-5\lambda_{\max}(S_w)}` is negligible; features with a small
    within-class scatter (:math:`\lambda_{\max}(S_w) \lesssim 1`) are shrunk more, by the design of
    [1]_. The inputs are not modified (the mixed features are a new tensor). When :math:`n \ll D`
    the classifier separates the training samples perfectly and the score saturates at 1; project
    first with ``pca_dim``.

    Cost: :math:`O(nD^2 + D^3)`, twice.

    Args:
        features: Target features ``(n, D)``.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        pca_dim: Project on this many principal components first; ``None`` keeps the features.
        soften: Soften the first-stage posteriors with a second softmax before ConfMix.
        shrinkage: Fixed shrinkage coefficient :math:`\lambda \in [0, 1]` for both fits; ``None``
            (default, as [1]_) sets it from the first fit's :math:`S_w`.

    Returns:
        SFDA in :math:`[0, 1]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs, fewer than 2 classes or a shrinkage outside ``[0, 1]``.
    """
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1] or None, got {shrinkage}")
    x = check_features(features)
    y, num_classes = check_labels(labels, x.shape[0], min_classes=2, device=x.device)
    if pca_dim is not None:
        x, _ = pca(x, pca_dim)
    posteriors, shrinkage = fisher_posteriors(x, y, num_classes, shrinkage)
    if soften:
        posteriors = torch.softmax(posteriors, dim=1)
    confidence = posteriors.gather(1, y[:, None])  # (n, 1)
    _, means = class_stats(x, y, num_classes)
    others = (means.sum(dim=0, keepdim=True) - means) / (num_classes - 1)  # (C, D)
    mixed = confidence * x + (1.0 - confidence) * others[y]
    refit, _ = fisher_posteriors(mixed, y, num_classes, shrinkage)
    return float(refit.gather(1, y[:, None]).mean())
