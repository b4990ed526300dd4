r"""H-score [1]_ and its Ledoit–Wolf shrinkage variant [2]_.

References:
    .. [1] Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas. "An
       Information-Theoretic Approach to Transferability in Task Transfer Learning". ICIP 2019.
    .. [2] S. Ibrahim, N. Ponomareva, R. Mazumder. "Newer is not always better: Rethinking
       transferability metrics, their peculiarities, stability and performance". ECML PKDD 2022.
    .. [3] O. Ledoit, M. Wolf. "A well-conditioned estimator for large-dimensional covariance
       matrices". Journal of Multivariate Analysis, 2004.
"""

from __future__ import annotations

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_features, check_labels
from tta.estimators._linalg import pinv_psd, scatter_matrices

__all__ = ["hscore", "hscore_reg"]

_RTOL = 1e-12  # eigenvalues of cov(f) below this fraction of the largest are treated as zero


@register_estimator("hscore", inputs="features", higher_is_better=True, complexity="O(nD² + D³)")
def hscore(features: ArrayLike, labels: ArrayLike) -> float:
    r"""H-score: how much of the feature covariance the class-conditional means explain.

    .. math::
        H(f) = \operatorname{tr}\!\left(\operatorname{cov}(f)^{+}\,
        \operatorname{cov}\!\left(\mathbb{E}[f \mid y]\right)\right),

    both covariances with the :math:`1/n` normalisation, :math:`{}^{+}` the pseudo-inverse
    (eigenvalues below :math:`10^{-12}\lambda_{\max}` dropped). Since
    :math:`\operatorname{cov}(f) = S_w + S_b` and :math:`\operatorname{cov}(\mathbb{E}[f \mid y]) = S_b`
    has rank at most :math:`C - 1`, :math:`0 \le H \le \min(C - 1, D)`, with the upper end reached
    when the within-class scatter vanishes. It saturates there, which is why :func:`hscore_reg`
    exists.

    Cost: :math:`O(nD^2 + D^3)`.

    Args:
        features: Target features ``(n, D)``.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.

    Returns:
        H-score in :math:`[0, \min(C - 1, D)]`; about 0 for features independent of the labels.
        Higher is better.

    Raises:
        ValueError: On ill-formed inputs.
    """
    x = check_features(features)
    y, num_classes = check_labels(labels, x.shape[0], device=x.device)
    _, _, _, s_b = scatter_matrices(x, y, num_classes)
    xc = x - x.mean(dim=0, keepdim=True)
    cov_f = xc.T @ xc / x.shape[0]
    return float(torch.trace(pinv_psd(cov_f, rtol=_RTOL) @ s_b))


@register_estimator("hscore_reg", inputs="features", higher_is_better=True, complexity="O(nD² + D³)")
def hscore_reg(features: ArrayLike, labels: ArrayLike) -> float:
    r"""Shrinkage H-score: the H-score with a Ledoit–Wolf estimate of :math:`\operatorname{cov}(f)`.

    With :math:`S = \operatorname{cov}(f)` (:math:`1/n`), :math:`\mu = \operatorname{tr}(S)/D` and the
    Ledoit–Wolf shrinkage intensity :math:`\alpha \in [0, 1]` [3]_,

    .. math::
        H_\alpha(f) = \operatorname{tr}\!\left(\big((1 - \alpha) S + \alpha \mu I\big)^{-1}
        (1 - \alpha)\operatorname{cov}\!\left(\mathbb{E}[f \mid y]\right)\right).

    The between-class covariance is shrunk by the same :math:`1 - \alpha`, so
    :math:`0 \le H_\alpha \le H \le \min(C - 1, D)`; unlike :func:`hscore` it does not saturate when
    :math:`n \lesssim D`. The intensity comes from :func:`sklearn.covariance.ledoit_wolf`.

    Cost: :math:`O(nD^2 + D^3)`.

    Args:
        features: Target features ``(n, D)``.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.

    Returns:
        Shrinkage H-score in :math:`[0, \min(C - 1, D)]`. Higher is better.

    Raises:
        ValueError: On ill-formed inputs.
    """
    from sklearn.covariance import ledoit_wolf

    x = check_features(features)
    y, num_classes = check_labels(labels, x.shape[0], device=x.device)
    _, _, _, s_b = scatter_matrices(x, y, num_classes)
    xc = x - x.mean(dim=0, keepdim=True)
    shrunk, alpha = ledoit_wolf(xc.cpu().numpy(), assume_centered=True)
    cov_f = torch.as_tensor(shrunk, dtype=torch.float64, device=x.device)
    return float(torch.trace(pinv_psd(cov_f, rtol=_RTOL) @ ((1.0 - float(alpha)) * s_b)))
