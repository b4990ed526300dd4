r"""Logarithm of Maximum Evidence (LogME) [1]_.

References:
    .. [1] K. You, Y. Liu, J. Wang, M. Long. "LogME: Practical Assessment of Pre-trained Models for
       Transfer Learning". ICML 2021.
    .. [2] D. J. C. MacKay. "Bayesian Interpolation". Neural Computation, 1992.
"""

from __future__ import annotations

import math

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_features, check_labels

__all__ = ["log_evidence", "logme"]

_TINY = 1e-300


def log_evidence(
    s2: torch.Tensor, z: torch.Tensor, y_sq: float, n: int, d: int, alpha: float, beta: float
) -> float:
    r"""Log evidence of Bayesian linear regression in the SVD basis of the design matrix.

    With :math:`F = U \operatorname{diag}(s) V^\top` (thin SVD, :math:`k = \min(n, D)`),
    :math:`\sigma_j = s_j^2`, :math:`z = U^\top y`, prior :math:`w \sim \mathcal N(0, \alpha^{-1} I)`
    and noise :math:`\mathcal N(0, \beta^{-1})`:

    .. math::
        \mathcal L(\alpha, \beta) = \frac n2 \log\beta + \frac D2 \log\alpha - \frac n2 \log 2\pi
        - \frac\beta2 \lVert F m - y\rVert^2 - \frac\alpha2 \lVert m\rVert^2
        - \frac12 \log\det(\alpha I + \beta F^\top F),

    :math:`m = \beta (\alpha I + \beta F^\top F)^{-1} F^\top y`, where
    :math:`\log\det(\cdot) = \sum_{j \le k} \log(\alpha + \beta\sigma_j) + (D - k)\log\alpha`.

    Args:
        s2: Squared singular values ``(k,)``.
        z: Projections :math:`U^\top y` ``(k,)``.
        y_sq: :math:`\lVert y\rVert^2`.
        n: Number of samples.
        d: Feature dimension :math:`D`.
        alpha: Prior precision.
        beta: Noise precision.

    Returns:
        :math:`\mathcal L(\alpha, \beta)` (not divided by ``n``).
    """
    denom = alpha + beta * s2
    m_sq = float((beta**2 * s2 * z**2 / denom**2).sum())
    residual = float((z * alpha / denom).pow(2).sum()) + max(y_sq - float((z**2).sum()), 0.0)
    k = s2.numel()
    logdet = float(torch.log(denom).sum()) + (d - k) * math.log(alpha)
    return (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * residual
        - 0.5 * alpha * m_sq
        - 0.5 * logdet
    )


def _maximise(
    s2: torch.Tensor, z: torch.Tensor, y_sq: float, n: int, max_iter: int, tol: float
) -> tuple[float, float]:
    """MacKay's fixed point for (α, β), started at (1, 1)."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom = alpha + beta * s2
        gamma = float((beta * s2 / denom).sum())
        m_sq = float((beta**2 * s2 * z**2 / denom**2).sum())
        residual = float((z * alpha / denom).pow(2).sum()) + max(y_sq - float((z**2).sum()), 0.0)
        new_alpha = gamma / max(m_sq, _TINY)
        new_beta = max(n - gamma, 0.0) / max(residual, _TINY)
        new_alpha, new_beta = max(new_alpha, _TINY), max(new_beta, _TINY)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return alpha, beta


@register_estimator(
    "logme",
    inputs="features",
    higher_is_better=True,
    complexity="O(nD·min(n, D) + C·n·min(n, D))",
)
def logme(features: ArrayLike, labels: ArrayLike, *, max_iter: int = 11, tol: float = 1e-3) -> float:
    r"""LogME: maximum log evidence of a linear model from the features to each one-hot label column.

    For each class :math:`c`, with :math:`y^{(c)}_i = [y_i = c]`, the Bayesian linear regression
    :math:`y^{(c)} = F w + \varepsilon`, :math:`w \sim \mathcal N(0, \alpha^{-1} I)`,
    :math:`\varepsilon \sim \mathcal N(0, \beta^{-1} I)` has evidence :math:`\mathcal L_c(\alpha, \beta)`
    (:func:`log_evidence`). It is maximised by MacKay's fixed point [2]_ on the SVD of :math:`F`,
    started at :math:`\alpha = \beta = 1`,

    .. math::
        \gamma = \sum_j \frac{\beta\sigma_j}{\alpha + \beta\sigma_j}, \qquad
        \alpha \leftarrow \frac{\gamma}{\lVert m\rVert^2}, \qquad
        \beta \leftarrow \frac{n - \gamma}{\lVert F m - y^{(c)}\rVert^2},

    stopped when :math:`\alpha/\beta` moves by less than ``tol`` (relative) or after ``max_iter``
    updates, and

    .. math::
        \mathrm{LogME} = \frac1C \sum_{c=1}^{C} \frac1n \mathcal L_c(\alpha_c^\star, \beta_c^\star).

    The features are used as given (no centring, no bias column), as in [1]_.

    Cost: one thin SVD :math:`O(nD\min(n, D))`, then :math:`O(n\min(n, D))` per class.

    Args:
        features: Target features ``(n, D)`` (the training split).
        labels: Target labels ``(n,)``, integers in ``[0, C)``.
        max_iter: Fixed-point updates per class, at most.
        tol: Relative change of :math:`\alpha/\beta` at which to stop.

    Returns:
        LogME, the average per-sample log evidence (unbounded). Higher is better.

    Raises:
        ValueError: On ill-formed inputs.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = check_features(features)
    n, d = x.shape
    y, num_classes = check_labels(labels, n, device=x.device)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    s2 = s**2
    onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)
    projections = u.T @ onehot  # (k, C)
    counts = onehot.sum(dim=0)  # ‖y^(c)‖² = n_c
    total = 0.0
    for c in range(num_classes):
        z, y_sq = projections[:, c], float(counts[c])
        alpha, beta = _maximise(s2, z, y_sq, n, max_iter, tol)
        total += log_evidence(s2, z, y_sq, n, d, alpha, beta) / n
    return total / num_classes
