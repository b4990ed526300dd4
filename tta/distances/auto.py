r"""Exact W₁ where it is affordable, Sinkhorn beyond: decided per OT subproblem.

.. math::
    \widehat W_1 = \begin{cases} \text{EMD} & n_k m_k \le \text{exact\_max\_pairs} \\
    S_\varepsilon & \text{otherwise} \end{cases}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tta.distances.base import DistanceEstimator, SoftLabels, label_marginals
from tta.distances.exact import ExactDistance, per_label_exact
from tta.distances.sinkhorn import SinkhornDistance
from tta.errors import TTAInputError
from tta.plugins import DISTANCES

__all__ = ["AutoDistance"]


@DISTANCES.register("auto")
class AutoDistance(DistanceEstimator):
    r"""Exact EMD for small problems, debiased Sinkhorn for large ones (DESIGN §1.5).

    .. math::
        \text{solver}(n_k, m_k) = \text{exact} \iff n_k m_k \le \text{exact\_max\_pairs}

    The choice is made for each OT problem actually solved (each class on the per-label path, the
    expanded problem on the joint path). Beyond the threshold it runs :class:`SinkhornDistance` with
    backend ``"auto"``: tensorized on CPU, online KeOps on CUDA. ``diagnostics["solver"]`` says
    ``"exact"``, ``"sinkhorn"`` or ``"exact+sinkhorn"``; ``diagnostics["subproblems"]`` has the choice
    for each subproblem.

    Args:
        exact_max_pairs: Largest :math:`n m` solved exactly (default 2000 × 2000).
        blur: Sinkhorn blur, relative to the data scale (see :class:`SinkhornDistance`).
        scaling: Sinkhorn ε-scaling ratio.
        debias: Debiased Sinkhorn divergence.
        max_iter: Network-simplex iteration limit of the exact solver.
        soft_labels: ``"mixture"`` or ``"vector"``, see :class:`~tta.distances.DistanceEstimator`.
    """

    name = "auto"

    def __init__(
        self,
        exact_max_pairs: int = 4_000_000,
        blur: float = 0.01,
        scaling: float = 0.9,
        debias: bool = True,
        max_iter: int = 1_000_000,
        soft_labels: SoftLabels = "mixture",
    ) -> None:
        super().__init__(soft_labels=soft_labels)
        if exact_max_pairs < 0:
            raise TTAInputError(f"auto: exact_max_pairs must be nonnegative, got {exact_max_pairs}")
        self.exact_max_pairs = int(exact_max_pairs)
        self.exact = ExactDistance(max_iter=max_iter, soft_labels=soft_labels)
        self.sinkhorn = SinkhornDistance(
            blur=blur, scaling=scaling, backend="auto", debias=debias, soft_labels=soft_labels
        )

    def __repr__(self) -> str:
        return (
            f"AutoDistance(exact_max_pairs={self.exact_max_pairs}, exact={self.exact!r}, "
            f"sinkhorn={self.sinkhorn!r})"
        )

    def _begin(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, diameter: float) -> None:
        super()._begin(x, y, a, b, diameter)
        # Sinkhorn's data scale (a pass over both clouds) is computed only if a subproblem needs Sinkhorn
        self._scale_inputs: tuple[Tensor, ...] | None = (x, y, a, b)
        for solver in (self.exact, self.sinkhorn):
            solver._records = self._records  # the solvers report into this call's diagnostics
            solver._ctx = self._ctx

    def _pick(self, n: int, m: int) -> DistanceEstimator:
        if n * m <= self.exact_max_pairs and max(n, m) <= self.exact.max_points:
            return self.exact
        if "blur_abs" not in self._ctx and getattr(self, "_scale_inputs", None) is not None:
            self._ctx.update(self.sinkhorn._scale_context(*self._scale_inputs))
        return self.sinkhorn

    def _unlabelled(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return self._pick(x.shape[0], y.shape[0])._unlabelled(x, y, a, b)

    def _per_label(
        self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, x_labels: Tensor, y_labels: Tensor
    ) -> Tensor:
        with torch.no_grad():
            src = (a.detach()[:, None] * x_labels.detach()) > 0  # (n, K)
            tgt = (b.detach()[:, None] * y_labels.detach()) > 0  # (m, K)
            active = (label_marginals(a.detach(), x_labels.detach()) > 0) & (
                label_marginals(b.detach(), y_labels.detach()) > 0
            )
            sizes = list(zip(src.sum(0)[active].tolist(), tgt.sum(0)[active].tolist()))
        if all(self._pick(n, m) is self.exact for n, m in sizes):
            # every class is solved exactly: the fast path (one cost matrix per class, sparse gradient)
            return per_label_exact(self, x, y, a, b, x_labels, y_labels, self.exact.max_iter)
        return super()._per_label(x, y, a, b, x_labels, y_labels)

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
        solver = self._pick(x.shape[0], y.shape[0])
        return solver._joint(x, y, a, b, x_labels, y_labels, label_cost)

    def _finish(self, *args: Any, **kwargs: Any) -> None:
        self._scale_inputs = None
        super()._finish(*args, **kwargs)
        if not any(r.get("solver") == "sinkhorn" for r in self._records):
            self.diagnostics["scale"] = None  # the scale only matters when Sinkhorn ran
