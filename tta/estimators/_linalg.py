"""Linear-algebra helpers shared by the estimators (float64 torch)."""

from __future__ import annotations

import math

import torch


def pinv_psd(a: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse of a symmetric positive semi-definite matrix.

    Eigenvalues below ``rtol * λ_max`` (default ``D · eps``) are treated as zero.
    """
    a = (a + a.T) / 2
    evals, evecs = torch.linalg.eigh(a)
    if rtol is None:
        rtol = a.shape[0] * torch.finfo(a.dtype).eps
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > rtol * max(top, 0.0)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def pca(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Project centred ``x`` ``(n, D)`` on its top ``dim`` principal axes.

    Args:
        x: Data ``(n, D)``.
        dim: Components kept; ``None`` keeps ``min(n, D)``. Capped at ``min(n, D)``.

    Returns:
        ``(scores, variances)``: the projection ``(n, k)`` and the explained variances of all
        ``min(n, D)`` components, with the unbiased ``1/(n-1)`` normalisation, largest first.
    """
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    k = min(n, d) if dim is None else max(1, min(dim, n, d))
    return u[:, :k] * s[:k], s**2 / max(n - 1, 1)


def class_stats(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class counts ``(C,)`` and class means ``(C, D)`` of ``x`` under integer labels ``y``."""
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, y, x)
    return counts, sums / counts.clamp_min(1)[:, None]


def scatter_matrices(
    x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Priors ``(C,)``, class means ``(C, D)``, within- and between-class scatter ``(D, D)``.

    Both scatters use the ``1/n`` normalisation, so ``S_w + S_b`` is the (biased) total covariance.
    """
    n = x.shape[0]
    counts, means = class_stats(x, y, num_classes)
    priors = counts / n
    within = x - means[y]
    s_w = within.T @ within / n
    centred_means = means - x.mean(dim=0, keepdim=True)
    s_b = (centred_means * priors[:, None]).T @ centred_means
    return priors, means, s_w, s_b


def lda_log_posteriors(
    x: torch.Tensor, means: torch.Tensor, priors: torch.Tensor, cov: torch.Tensor
) -> torch.Tensor:
    r"""Log posteriors ``(n, C)`` of linear discriminant analysis with a shared covariance.

    .. math::
        \log p(c \mid x) = x^\top \Sigma^{+} \mu_c - \tfrac12 \mu_c^\top \Sigma^{+} \mu_c
        + \log \pi_c - \log Z(x)
    """
    prec_means = means @ pinv_psd(cov)  # (C, D)
    logits = x @ prec_means.T - 0.5 * (prec_means * means).sum(dim=1) + torch.log(priors)
    return torch.log_softmax(logits, dim=1)


def fisher_directions(s_b: torch.Tensor, s_w: torch.Tensor, k: int) -> torch.Tensor:
    """Top ``k`` generalised eigenvectors ``W`` ``(D, k)`` of ``S_b w = λ S_w w``, with ``Wᵀ S_w W = I``.

    Directions in the numerical null space of ``S_w`` (eigenvalues below ``D · eps · λ_max``) are
    left out, as with a pseudo-inverse; regularise ``S_w`` first to keep them.
    """
    evals, evecs = torch.linalg.eigh((s_w + s_w.T) / 2)
    keep = evals > s_w.shape[0] * torch.finfo(s_w.dtype).eps * max(float(evals.max()), 0.0)
    whitener = evecs[:, keep] / evals[keep].sqrt()  # (D, r), whitenerᵀ S_w whitener = I
    whitened = whitener.T @ s_b @ whitener
    _, rotation = torch.linalg.eigh((whitened + whitened.T) / 2)
    k = min(k, rotation.shape[1])
    return whitener @ rotation[:, rotation.shape[1] - k :].flip(1)


def nuclear_norm(a: torch.Tensor) -> float:
    """Sum of the singular values of ``a``."""
    return float(torch.linalg.svdvals(a).sum())


def min_max(values: list[float]) -> list[float]:
    """Min–max normalise to ``[0, 1]``; all-equal values map to 0."""
    lo, hi = min(values), max(values)
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return [0.0 for _ in values]
    return [(v - lo) / span for v in values]
