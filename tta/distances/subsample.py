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
(``diagnostics["w1_ci_low"]``, ``["w1_ci_high"]``, Student-t over the replicates, classes combined by
adding variances) is a confidence interval for that expectation, not for the exact value, which lies
below it or inside it. Memory is :math:`O(\text{max\_points}^2 + (n + m) d)` whatever :math:`n`; time is
``replicates`` × (number of classes) exact solves of size ``max_points``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tta.distances.base import DistanceEstimator, SoftLabels, label_marginals
from tta.distances.exact import ExactDistance
from tta.errors import TTAInputError
from tta.plugins import DISTANCES

__all__ = ["SubsampledDistance"]

# two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def _t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


@DISTANCES.register("subsample")
class SubsampledDistance(DistanceEstimator):
    r"""Exact W₁ up to ``max_points`` per side, the mean of exact subsample solves beyond (with a CI).

    .. math::
        \widehat W_1 = \frac1R \sum_r W_1(\hat\mu_r, \hat\nu_r) \;\ge_{\mathbb E}\; W_1(\mu, \nu)

    Applied to each OT problem actually solved (each class on the per-label path). When any problem
    was subsampled, ``diagnostics["estimate"]`` is ``True`` and the diagnostics carry ``w1_sem``,
    ``w1_ci_low``, ``w1_ci_high`` (95%), ``replicates`` and ``max_points``; otherwise the value is
    exact and the interval collapses to it.

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
        if max_points < 2:
            raise TTAInputError(f"subsample: max_points must be at least 2, got {max_points}")
        if replicates < 1:
            raise TTAInputError(
                f"subsample: replicates must be at least 1 (2 or more for an interval), got {replicates}"
            )
        self.max_points = int(max_points)
        self.replicates = int(replicates)
        self.seed = int(seed)
        self.exact = ExactDistance(
            max_iter=max_iter, max_points=max(max_points, 20_000), soft_labels=soft_labels
        )
        self._var = 0.0

    def __repr__(self) -> str:
        return (
            f"SubsampledDistance(max_points={self.max_points}, replicates={self.replicates}, "
            f"seed={self.seed}, soft_labels={self.soft_labels!r})"
        )

    def _begin(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, diameter: float) -> None:
        super()._begin(x, y, a, b, diameter)
        self.exact._records = self._records
        self.exact._ctx = self._ctx
        self._var = 0.0
        self._generator = torch.Generator().manual_seed(self.seed)

    def _draw(self, w: Tensor) -> Tensor:
        return torch.multinomial(
            w.detach().double().cpu(), self.max_points, replacement=True, generator=self._generator
        )

    def _solve(
        self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, labels: tuple[Tensor, Tensor, float] | None
    ) -> tuple[Tensor, float]:
        """Value and its variance (0 when solved exactly)."""
        n, m = x.shape[0], y.shape[0]

        def exact(xs: Tensor, ys: Tensor, wa: Tensor, wb: Tensor, lab: Any) -> Tensor:
            if lab is None:
                return self.exact._unlabelled(xs, ys, wa, wb)
            return self.exact._joint(xs, ys, wa, wb, *lab)

        if max(n, m) <= self.max_points:
            return exact(x, y, a, b, labels), 0.0
        values = []
        for _ in range(self.replicates):
            ia = self._draw(a).to(x.device) if n > self.max_points else torch.arange(n, device=x.device)
            ib = self._draw(b).to(y.device) if m > self.max_points else torch.arange(m, device=y.device)
            wa = (
                torch.full((ia.numel(),), 1.0 / ia.numel(), dtype=x.dtype, device=x.device)
                if n > self.max_points
                else a
            )
            wb = (
                torch.full((ib.numel(),), 1.0 / ib.numel(), dtype=x.dtype, device=x.device)
                if m > self.max_points
                else b
            )
            lab = None if labels is None else (labels[0][ia], labels[1][ib], labels[2])
            values.append(exact(x[ia], y[ib], wa, wb, lab))
            self._records[-1].update(subsampled=True, n_full=n, m_full=m)
        stacked = torch.stack(values)
        r = len(values)
        var = float(stacked.detach().double().var()) / r if r > 1 else float("nan")
        return stacked.mean(), var

    def _unlabelled(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        value, var = self._solve(x, y, a, b, None)
        self._var += var
        return value

    def _joint(
        self,
        x: Tensor,
        y: Tensor,
        a: Tensor,
        b: Tensor,
        x_labels: Tensor,
        y_labels: Tensor,
        label_cost: float,
    ) -> Tensor:
        value, var = self._solve(x, y, a, b, (x_labels, y_labels, label_cost))
        self._var += var
        return value

    def _per_label(
        self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, x_labels: Tensor, y_labels: Tensor
    ) -> Tensor:
        mass_src = label_marginals(a, x_labels)  # (K,)
        mass_tgt = label_marginals(b, y_labels)  # (K,)
        with torch.no_grad():
            active = ((mass_src > 0) & (mass_tgt > 0)).nonzero().flatten().tolist()
        value, var = x.new_zeros(()), 0.0
        for k in active:
            wa, wb = a * x_labels[:, k], b * y_labels[:, k]
            keep_a, keep_b = wa.detach() > 0, wb.detach() > 0
            m_k = 0.5 * (mass_src[k] + mass_tgt[k])
            before = len(self._records)
            v_k, var_k = self._solve(
                x[keep_a], y[keep_b], wa[keep_a] / wa[keep_a].sum(), wb[keep_b] / wb[keep_b].sum(), None
            )
            for rec in self._records[before:]:
                rec["label"] = k
            value = value + m_k * v_k
            var += float(m_k) ** 2 * var_k
        self._var = var
        return value

    def _finish(
        self, x: Tensor, y: Tensor, path: str, reason: str, lam: float | None, diameter: float, seconds: float
    ) -> None:
        super()._finish(x, y, path, reason, lam, diameter, seconds)
        subsampled = any(r.get("subsampled") for r in self._records)
        self.diagnostics.update(
            {
                "estimate": subsampled,
                "replicates": self.replicates if subsampled else 0,
                "max_points": self.max_points,
                "w1_sem": math.sqrt(self._var) if subsampled else 0.0,
            }
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """As :meth:`DistanceEstimator.__call__`; also sets ``w1_ci_low`` / ``w1_ci_high``."""
        value = super().__call__(*args, **kwargs)
        v, sem = float(value.detach()), self.diagnostics["w1_sem"]
        half = _t95(self.replicates - 1) * sem if self.diagnostics["estimate"] else 0.0
        self.diagnostics["w1_ci_low"], self.diagnostics["w1_ci_high"] = v - half, v + half
        return value
