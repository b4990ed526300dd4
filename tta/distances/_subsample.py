r"""W₁ of large problems from repeated subsamples, with a confidence interval (bounded memory).

For an OT problem larger than ``max_points`` on a side, draw ``replicates`` independent samples of
``max_points`` atoms from each measure (with replacement, probability proportional to the weights), solve
each exactly and average:

.. math::
    \widehat W_1 = \frac1R \sum_{r=1}^R W_1(\hat\mu_r, \hat\nu_r), \qquad
    \mathbb E\,\hat\mu_r = \mu,\ \mathbb E\,\hat\nu_r = \nu .

Because :math:`W_1` is jointly convex in its two measures, Jensen's inequality gives
:math:`W_1(\mu, \nu) \le \mathbb E\,W_1(\hat\mu_r, \hat\nu_r)`: the estimate is **conservative** (biased
upward; the bound built on it stays an upper bound in expectation). The reported interval
(the result's ``extra["w1_ci_low"]``, ``["w1_ci_high"]``, Student-t over the replicates, classes combined by
adding variances) is a confidence interval for that expectation, not for the exact value, which lies
below it or inside it. Memory is :math:`O(\text{max\_points}^2 + (n + m) d)` whatever :math:`n`; time is
``replicates`` × (number of classes) exact solves of size ``max_points``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tta.distances._estimator import DistanceEstimator
from tta.distances._exact import exact_solve
from tta.distances._functional import wasserstein_1
from tta.distances._geometry import SoftLabels
from tta.distances._measure import LabelledMeasure
from tta.distances._types import Solution, TransportProblem, W1Result
from tta.errors import TTAInputError
from tta.plugins import DISTANCES

__all__ = ["SubsampledDistance", "subsampled_solve", "subsampled_w1"]

# two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def _t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


def _check_arguments(max_points: int, replicates: int) -> None:
    if max_points < 2:
        raise TTAInputError(f"subsample: max_points must be at least 2, got {max_points}")
    if replicates < 1:
        raise TTAInputError(
            f"subsample: replicates must be at least 1 (2 or more for an interval), got {replicates}"
        )


def _uniform(count: int, like: Tensor) -> Tensor:
    return torch.full((count,), 1.0 / count, dtype=like.dtype, device=like.device)


def subsampled_solve(
    problem: TransportProblem,
    max_points: int = 2000,
    replicates: int = 5,
    seed: int = 0,
    max_iter: int = 1_000_000,
) -> Solution:
    r"""One balanced OT problem: exact up to ``max_points`` per side, else the mean of subsample solves.

    .. math::
        \widehat W_1 = \frac1R \sum_{r=1}^R W_1(\hat\mu_r, \hat\nu_r), \qquad
        \widehat{\operatorname{Var}} = \frac{s^2_R}{R}

    The subsamples of one call come from one generator seeded by ``seed`` (kept in
    ``problem.context.memo``), so a call is reproducible and its classes draw different subsamples.

    Args:
        problem: The problem (measures of mass 1).
        max_points: Largest side solved exactly; larger measures are subsampled to this many atoms.
        replicates: Subsample pairs per problem.
        seed: Seed of the call's subsamples.
        max_iter: Network-simplex iteration limit.

    Returns:
        The value, one report per exact solve (``extra["subsampled"]`` on replicates), and the
        variance of the mean (``nan`` for a single replicate).
    """
    exact_limit = max(max_points, 20_000)
    src, tgt = problem.source, problem.target
    n, m = src.num_points, tgt.num_points
    if max(n, m) <= max_points:
        return exact_solve(problem, max_iter, exact_limit)
    generator = problem.context.memo.setdefault(("subsample", seed), torch.Generator().manual_seed(seed))

    def draw(measure: LabelledMeasure) -> Tensor:
        assert measure.weights is not None
        if measure.num_points <= max_points:
            return torch.arange(measure.num_points, device=measure.points.device)
        weights = measure.weights.detach().double().cpu()
        idx = torch.multinomial(weights, max_points, replacement=True, generator=generator)
        return idx.to(measure.points.device)

    values, reports = [], []
    for _ in range(replicates):
        ia, ib = draw(src), draw(tgt)
        sub_src = src.select(ia).replace(
            weights=_uniform(ia.numel(), src.points) if n > max_points else src.weights
        )
        sub_tgt = tgt.select(ib).replace(
            weights=_uniform(ib.numel(), tgt.points) if m > max_points else tgt.weights
        )
        sub = TransportProblem(sub_src, sub_tgt, problem.label_cost, problem.label, problem.context)
        sol = exact_solve(sub, max_iter, exact_limit)
        values.append(sol.value)
        reports.extend(r.replace(extra={"subsampled": True, "n_full": n, "m_full": m}) for r in sol.reports)
    stacked = torch.stack(values)
    r = len(values)
    variance = float(stacked.detach().double().var()) / r if r > 1 else float("nan")
    return Solution(stacked.mean(), tuple(reports), variance)


def subsampled_w1(
    source: LabelledMeasure,
    target: LabelledMeasure,
    *,
    label_cost: float | None = None,
    soft_labels: SoftLabels = "mixture",
    max_points: int = 2000,
    replicates: int = 5,
    seed: int = 0,
    max_iter: int = 1_000_000,
) -> W1Result:
    r""":math:`W_1(\mu, \nu)` exactly where small, from repeated subsamples beyond, with a 95% interval.

    The functional form of :class:`SubsampledDistance` (same arguments; see there and the module
    docstring for why the estimate is conservative).

    Returns:
        The :class:`~tta.distances.W1Result` (``estimator="subsample"``); its ``extra`` holds
        ``estimate``, ``replicates``, ``max_points``, ``w1_sem``, ``w1_ci_low`` and ``w1_ci_high``.
    """
    _check_arguments(max_points, replicates)

    def solve(problem: TransportProblem) -> Solution:
        return subsampled_solve(problem, max_points, replicates, seed, max_iter)

    result = wasserstein_1(
        source, target, solve, label_cost=label_cost, soft_labels=soft_labels, estimator="subsample"
    )
    subsampled = any(r.extra.get("subsampled") for r in result.subproblems)
    sem = math.sqrt(result.variance) if subsampled else 0.0
    value = float(result.value.detach())
    half = _t95(replicates - 1) * sem if subsampled else 0.0
    return result.replace(
        extra={
            "estimate": subsampled,
            "replicates": replicates if subsampled else 0,
            "max_points": max_points,
            "w1_sem": sem,
            "w1_ci_low": value - half,
            "w1_ci_high": value + half,
        }
    )


@DISTANCES.register("subsample")
class SubsampledDistance(DistanceEstimator):
    r"""Exact W₁ up to ``max_points`` per side, the mean of exact subsample solves beyond (with a CI).

    .. math::
        \widehat W_1 = \frac1R \sum_r W_1(\hat\mu_r, \hat\nu_r) \;\ge_{\mathbb E}\; W_1(\mu, \nu)

    Applied to each OT problem actually solved (each class on the per-label path). The result's ``extra``
    holds ``estimate`` (``True`` when any problem was subsampled), ``w1_sem``, ``w1_ci_low``,
    ``w1_ci_high`` (95%), ``replicates`` and ``max_points``; without subsampling the value is exact and
    the interval collapses to it. The functional form is :func:`subsampled_w1`.

    Args:
        max_points: Largest number of points per side solved exactly; larger measures are subsampled
            to this many atoms.
        replicates: Independent subsample pairs per problem (≥ 2 for an interval).
        seed: Seed of the subsamples (the estimate is reproducible).
        max_iter: Network-simplex iteration limit.
        soft_labels: ``"mixture"`` or ``"vector"``, see :class:`~tta.distances.DistanceEstimator`.
    """

    name = "subsample"

    def __init__(
        self,
        max_points: int = 2000,
        replicates: int = 5,
        seed: int = 0,
        max_iter: int = 1_000_000,
        soft_labels: SoftLabels = "mixture",
    ) -> None:
        super().__init__(soft_labels=soft_labels)
        _check_arguments(max_points, replicates)
        self.max_points = int(max_points)
        self.replicates = int(replicates)
        self.seed = int(seed)
        self.max_iter = int(max_iter)

    def __repr__(self) -> str:
        return (
            f"SubsampledDistance(max_points={self.max_points}, replicates={self.replicates}, "
            f"seed={self.seed}, soft_labels={self.soft_labels!r})"
        )

    def solve(self, problem: TransportProblem) -> Solution:
        """One problem by :func:`subsampled_solve` with this estimator's parameters."""
        return subsampled_solve(problem, self.max_points, self.replicates, self.seed, self.max_iter)

    def _compute(
        self, source: LabelledMeasure, target: LabelledMeasure, label_cost: float | None
    ) -> W1Result:
        if self._overrides_solve(SubsampledDistance):  # a subclass's own hook runs through the shared driver
            return super()._compute(source, target, label_cost)
        return subsampled_w1(
            source,
            target,
            label_cost=label_cost,
            soft_labels=self.soft_labels,
            max_points=self.max_points,
            replicates=self.replicates,
            seed=self.seed,
            max_iter=self.max_iter,
        )
