r"""Self-challenging Fisher Discriminant Analysis (SFDA) [1]_.

References:
    .. [1] W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo. "Not All Models Are
       Equal: Predicting Model Transferability in a Self-challenging Fisher Space". ECCV 2022.
"""

from __future__ import annotations

import math

import torch

from tta.estimators._checks import ArrayLike, check_features, check_labels
from tta.estimators._linalg import class_stats, lda_log_posteriors, pca, scatter_matrices
from tta.estimators.base import register_estimator

__all__ = ["fisher_posteriors", "sfda"]


def fisher_posteriors(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Class posteriors ``(n, C)`` of regularised Fisher discriminant analysis, on ``x`` itself.

    The within-class scatter :math:`S_w` (:math:`1/n`) is shrunk towards the identity with an
    intensity set by its largest eigenvalue,

    .. math::
        \lambda = \exp\!\big(-5\,\lambda_{\max}(S_w)\big), \qquad
        \tilde S_w = (1 - \lambda) S_w + \lambda I,

    and the posteriors are those of the Gaussian classifier with shared covariance
    :math:`\tilde S_w`, class means :math:`\mu_c` and priors :math:`\pi_c = n_c/n`:
    :math:`p(c \mid x) \propto \pi_c \exp(x^\top \tilde S_w^{-1}\mu_c - \frac12 \mu_c^\top
    \tilde S_w^{-1}\mu_c)`. These equal the posteriors computed in the Fisher space spanned by the
    generalised eigenvectors of :math:`(S_b, \tilde S_w)`, since the class-dependent part of the
    discriminant lies in that space. (The exact :math:`\lambda_{\max}` replaces the few power
    iterations of the reference implementation.)

    Args:
        x: Features ``(n, D)`` (float64).
        y: Compact labels ``(n,)`` in ``[0, C)``.
        num_classes: ``C``.

    Returns:
        Posteriors ``(n, C)``.
    """
    priors, means, s_w, _ = scatter_matrices(x, y, num_classes)
    top = float(torch.linalg.eigvalsh((s_w + s_w.T) / 2)[-1])
    shrinkage = math.exp(-5.0 * top)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    cov = (1.0 - shrinkage) * s_w + shrinkage * eye
    return lda_log_posteriors(x, means, priors, cov).exp()


@register_estimator(
    "sfda", inputs="features", higher_is_better=True, complexity="O(nD² + D³), twice (plus PCA)"
)
def sfda(features: ArrayLike, labels: ArrayLike, *, pca_dim: int | None = None, soften: bool = True) -> float:
    r"""SFDA: mean true-class posterior of a Fisher classifier refitted on self-challenged features.

    1. Fit the regularised Fisher classifier of :func:`fisher_posteriors` and take the posteriors
       :math:`p_i = p(y_i \mid f_i)`; with ``soften`` they are first passed through a second softmax,
       :math:`p_i \leftarrow \operatorname{softmax}(p(\cdot \mid f_i))_{y_i}`, as in the reference
       implementation of [1]_, which keeps the mixing weights away from 0 and 1.
    2. ConfMix: move every sample towards the other classes in proportion to its uncertainty,

       .. math::
           \tilde f_i = p_i f_i + (1 - p_i)\, \bar\mu_{-y_i}, \qquad
           \bar\mu_{-c} = \frac{1}{C-1} \sum_{c' \ne c} \mu_{c'}.

    3. Refit on :math:`\tilde f` (shrinkage recomputed) and return

       .. math::
           \mathrm{SFDA} = \frac1n \sum_i p(y_i \mid \tilde f_i).

    The inputs are not modified (the mixed features are a new tensor). When :math:`n \ll D` the
    classifier separates the training samples perfectly and the score saturates at 1; project
    first with ``pca_dim``.

    Cost: :math:`O(nD^2 + D^3)`, twice.

    Args:
        features: Target features ``(n, D)``.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        pca_dim: Project on this many principal components first; ``None`` keeps the features.
        soften: Soften the first-stage posteriors with a second softmax before ConfMix.

    Returns:
        SFDA in :math:`[0, 1]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs or fewer than 2 classes.
    """
    x = check_features(features)
    y, num_classes = check_labels(labels, x.shape[0], min_classes=2, device=x.device)
    if pca_dim is not None:
        x, _ = pca(x, pca_dim)
    posteriors = fisher_posteriors(x, y, num_classes)
    if soften:
        posteriors = torch.softmax(posteriors, dim=1)
    confidence = posteriors.gather(1, y[:, None])  # (n, 1)
    _, means = class_stats(x, y, num_classes)
    others = (means.sum(dim=0, keepdim=True) - means) / (num_classes - 1)  # (C, D)
    mixed = confidence * x + (1.0 - confidence) * others[y]
    refit = fisher_posteriors(mixed, y, num_classes)
    return float(refit.gather(1, y[:, None]).mean())
