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
* ``mean_weighted_tau`` is the literature's figure: τ_w per target over that target's candidates,
  averaged over the targets where it is defined (at least three candidates, neither score nor truth
  constant).
* Intervals are percentile bootstraps (``scipy.stats.bootstrap(..., method="percentile")``) at
  :data:`CONFIDENCE_LEVEL`, :data:`N_RESAMPLES` resamples from ``numpy.random.default_rng``
  (:data:`BOOTSTRAP_SEED`): the pooled τ_w resamples (score, truth) **pairs**, the mean per-target τ_w
  resamples **targets** (their per-target τ_w values). Resamples on which τ_w is undefined (every
  resampled score or truth equal) are left out of the percentiles.

Fewer than three candidates, or a constant score or truth, give ``nan`` correlations (never a number
that carries no information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_SEED",
    "CONFIDENCE_LEVEL",
    "N_RESAMPLES",
    "correlations",
    "kendall_tau",
    "mean_weighted_tau",
    "pearson",
    "rel_at_k",
    "weighted_tau",
    "weighted_tau_interval",
]

MIN_CANDIDATES = 3

#: Confidence level of every bootstrap interval.
CONFIDENCE_LEVEL = 0.95
#: Bootstrap resamples per interval (the default of ``tta benchmark --bootstrap-resamples``).
N_RESAMPLES = 1000
#: Seed of ``numpy.random.default_rng`` for every bootstrap (the same resamples for every estimator).
BOOTSTRAP_SEED = 0


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


def _bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    *,
    paired: bool,
    vectorized: bool,
    confidence_level: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap interval by ``scipy.stats.bootstrap``; undefined resamples left out."""
    import inspect
    import warnings

    from scipy.stats import bootstrap

    generator = np.random.default_rng(seed)
    key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"  # SciPy < 1.15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) distributions are expected here
        result = bootstrap(
            data,
            statistic,
            paired=paired,
            vectorized=vectorized,
            n_resamples=n_resamples,
            confidence_level=confidence_level,
            method="percentile",
            **{key: generator},
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    values = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 50.0 * (1.0 - confidence_level)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def weighted_tau_interval(
    score: Sequence[float],
    truth: Sequence[float],
    *,
    confidence_level: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Bootstrap interval of :func:`weighted_tau`, resampling the finite (score, truth) pairs.

    Args:
        score: Aligned scores, one per candidate.
        truth: Oriented ground truth, one per candidate.
        confidence_level: Confidence level of the interval.
        n_resamples: Bootstrap resamples; 0 skips the interval.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` where τ_w itself is undefined or ``n_resamples`` is 0.
    """
    arrays = _arrays(score, truth)
    if arrays is None or n_resamples < 1:
        return math.nan, math.nan
    from scipy.stats import weightedtau

    def statistic(s: np.ndarray, t: np.ndarray) -> float:
        if np.ptp(s) == 0 or np.ptp(t) == 0:
            return math.nan
        return float(weightedtau(s, t)[0])

    return _bootstrap(
        arrays,
        statistic,
        paired=True,
        vectorized=False,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
    )


def mean_weighted_tau(
    per_target: Sequence[float],
    *,
    confidence_level: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """The mean of per-target τ_w values with a bootstrap interval resampling targets.

    Args:
        per_target: One τ_w per target (:func:`weighted_tau` over that target's candidates); ``nan``
            entries (fewer than three candidates, a constant score or truth) are left out.
        confidence_level: Confidence level of the interval.
        n_resamples: Bootstrap resamples; 0 skips the interval.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``{"mean_weighted_tau", "mean_weighted_tau_low", "mean_weighted_tau_high",
        "mean_weighted_tau_targets"}``: the mean (``nan`` without any defined target), the interval
        (``nan`` with fewer than two targets or ``n_resamples`` 0) and the number of targets averaged.
    """
    values = np.asarray([v for v in per_target if math.isfinite(v)], dtype=np.float64)
    mean = float(values.mean()) if values.size else math.nan
    low = high = math.nan
    if values.size >= 2 and n_resamples >= 1:
        low, high = _bootstrap(
            (values,),
            np.mean,
            paired=False,
            vectorized=True,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            seed=seed,
        )
    return {
        "mean_weighted_tau": mean,
        "mean_weighted_tau_low": low,
        "mean_weighted_tau_high": high,
        "mean_weighted_tau_targets": int(values.size),
    }


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
