"""How well an estimator's scores rank candidates: Pearson r, Kendall τ, weighted Kendall τ_w, rel@k.

Conventions (stated in every report):

* Scores are **sign-aligned** first: a score where lower is better (the tta bound) is negated, so that
  for every estimator a larger aligned score predicts better transfer.
* The ground truth is oriented the same way: accuracy as is, cross-entropy negated.
* ``weighted_tau`` is ``scipy.stats.weightedtau(score, truth)`` with SciPy's defaults (hyperbolic
  weigher :math:`1/(r+1)`; ``rank=True``: elements are weighed by their decreasing lexicographic rank
  by (score, truth) and by (truth, score), and the two weighted τ are averaged, so exchanges among the
  top candidates count most), the convention of most transferability papers.
* ``rel@k`` = best ground truth among the k top-scored candidates / best ground truth overall (for a
  positive ground truth such as accuracy).

Fewer than three candidates, or a constant score or truth, give ``nan`` correlations (never a number
that carries no information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["correlations", "kendall_tau", "pearson", "rel_at_k", "weighted_tau"]

MIN_CANDIDATES = 3


def _arrays(score: Sequence[float], truth: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1:
        raise ValueError(f"score and truth must be 1-d of equal length, got {s.shape} and {t.shape}")
    keep = np.isfinite(s) & np.isfinite(t)
    s, t = s[keep], t[keep]
    if s.size < MIN_CANDIDATES or np.ptp(s) == 0 or np.ptp(t) == 0:
        return None
    return s, t


def pearson(score: Sequence[float], truth: Sequence[float]) -> float:
    """Pearson correlation of finite (score, truth) pairs; ``nan`` when undefined."""
    arrays = _arrays(score, truth)
    if arrays is None:
        return math.nan
    from scipy.stats import pearsonr

    return float(pearsonr(*arrays)[0])


def kendall_tau(score: Sequence[float], truth: Sequence[float]) -> float:
    """Kendall τ-b of finite (score, truth) pairs; ``nan`` when undefined."""
    arrays = _arrays(score, truth)
    if arrays is None:
        return math.nan
    from scipy.stats import kendalltau

    return float(kendalltau(*arrays)[0])


def weighted_tau(score: Sequence[float], truth: Sequence[float]) -> float:
    """``scipy.stats.weightedtau(score, truth)`` with its defaults; ``nan`` when undefined."""
    arrays = _arrays(score, truth)
    if arrays is None:
        return math.nan
    from scipy.stats import weightedtau

    return float(weightedtau(*arrays)[0])


def rel_at_k(score: Sequence[float], truth: Sequence[float], k: int) -> float:
    """Best truth among the ``k`` top-scored candidates divided by the best truth overall.

    Partial ties in the score are broken by the candidate order. ``nan`` with fewer than two finite
    candidates, when every score is equal (no ranking at all) or when the best truth is not positive.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(t)
    s, t = s[keep], t[keep]
    if s.size < 2 or t.max() <= 0 or np.ptp(s) == 0:
        return math.nan
    top = np.argsort(-s, kind="stable")[:k]
    return float(t[top].max() / t.max())


def correlations(score: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Every metric of one aligned score against one oriented truth, plus the number of candidates."""
    n = int(np.sum(np.isfinite(np.asarray(score, float)) & np.isfinite(np.asarray(truth, float))))
    return {
        "n": n,
        "pearson": pearson(score, truth),
        "kendall_tau": kendall_tau(score, truth),
        "weighted_tau": weighted_tau(score, truth),
        "rel@1": rel_at_k(score, truth, 1),
        "rel@3": rel_at_k(score, truth, 3),
    }
