r"""Exact W₁ where it is affordable, Sinkhorn beyond: decided per OT subproblem.

.. math::
    \widehat W_1 = \begin{cases} \text{EMD} & n_k m_k \le \text{exact\_max\_pairs} \\
    S_\varepsilon & \text{otherwise} \end{cases}
"""

from __future__ import annotations

import torch

from tta.distances._estimator import DistanceEstimator
from tta.distances._exact import ExactDistance, exact_solve, per_label_exact
from tta.distances._functional import wasserstein_1
from tta.distances._geometry import SoftLabels, label_marginals
from tta.distances._measure import LabelledMeasure
from tta.distances._sinkhorn import SinkhornDistance, sinkhorn_solve
from tta.distances._types import CallContext, Solution, TransportProblem, W1Result
from tta.errors import TTAInputError
from tta.plugins import DISTANCES

__all__ = ["AutoDistance", "auto_w1"]

_EXACT_MAX_POINTS = 20_000  # ExactDistance's default max_points


def _is_small(n: int, m: int, exact_max_pairs: int) -> bool:
    return n * m <= exact_max_pairs and max(n, m) <= _EXACT_MAX_POINTS


def auto_w1(
    source: LabelledMeasure,
    target: LabelledMeasure,
    *,
    label_cost: float | None = None,
    soft_labels: SoftLabels = "mixture",
    exact_max_pairs: int = 4_000_000,
    blur: float = 0.01,
    scaling: float = 0.9,
    debias: bool = True,
    max_iter: int = 1_000_000,
) -> W1Result:
    r""":math:`W_1(\mu, \nu)`, each OT subproblem solved exactly where affordable, by Sinkhorn beyond.

    The functional form of :class:`AutoDistance` (same arguments; see there).

    Returns:
        The :class:`~tta.distances.W1Result` (``estimator="auto"``; ``scale`` is ``None`` unless
        Sinkhorn ran).
    """
    if exact_max_pairs < 0:
        raise TTAInputError(f"auto: exact_max_pairs must be nonnegative, got {exact_max_pairs}")

    def solve(problem: TransportProblem) -> Solution:
        if _is_small(problem.source.num_points, problem.target.num_points, exact_max_pairs):
            return exact_solve(problem, max_iter, _EXACT_MAX_POINTS)
        return sinkhorn_solve(problem, blur, scaling, "auto", debias)

    def per_label(src: LabelledMeasure, tgt: LabelledMeasure, _: CallContext) -> Solution | None:
        assert src.weights is not None and tgt.weights is not None
        assert src.labels is not None and tgt.labels is not None
        with torch.no_grad():
            a, b, xl, yl = (
                src.weights.detach(),
                tgt.weights.detach(),
                src.labels.detach(),
                tgt.labels.detach(),
            )
            active = (label_marginals(a, xl) > 0) & (label_marginals(b, yl) > 0)  # (K,)
            n_k = ((a[:, None] * xl) > 0).sum(0)[active].tolist()  # (K_active,)
            m_k = ((b[:, None] * yl) > 0).sum(0)[active].tolist()
        if all(_is_small(n, m, exact_max_pairs) for n, m in zip(n_k, m_k)):
            # every class is solved exactly: the fast path (one cost matrix per call, closed-form gradient)
            return per_label_exact(src, tgt, max_iter)
        return None

    return wasserstein_1(
        source,
        target,
        solve,
        label_cost=label_cost,
        soft_labels=soft_labels,
        estimator="auto",
        per_label=per_label,
    )


@DISTANCES.register("auto")
class AutoDistance(DistanceEstimator):
    r"""Exact EMD for small problems, debiased Sinkhorn for large ones (DESIGN §1.5).

    .. math::
        \text{solver}(n_k, m_k) = \text{exact} \iff n_k m_k \le \text{exact\_max\_pairs}

    The choice is made for each OT problem actually solved (each class on the per-label path, the
    expanded problem on the joint path). Beyond the threshold it runs :class:`SinkhornDistance` with
    backend ``"auto"``: tensorized on CPU, online KeOps on CUDA. The result's ``solver`` says
    ``"exact"``, ``"sinkhorn"`` or ``"exact+sinkhorn"``; its ``subproblems`` have the choice for each
    subproblem. The functional form is :func:`auto_w1`.

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

    def solve(self, problem: TransportProblem) -> Solution:
        r"""One problem, exactly if :math:`nm \le` ``exact_max_pairs``, else by Sinkhorn."""
        n, m = problem.source.num_points, problem.target.num_points
        if _is_small(n, m, self.exact_max_pairs):
            return self.exact.solve(problem)
        return self.sinkhorn.solve(problem)

    def _compute(
        self, source: LabelledMeasure, target: LabelledMeasure, label_cost: float | None
    ) -> W1Result:
        if self._overrides_solve(AutoDistance):  # a subclass's own hook runs through the shared driver
            return super()._compute(source, target, label_cost)
        return auto_w1(
            source,
            target,
            label_cost=label_cost,
            soft_labels=self.soft_labels,
            exact_max_pairs=self.exact_max_pairs,
            blur=self.sinkhorn.blur,
            scaling=self.sinkhorn.scaling,
            debias=self.sinkhorn.debias,
            max_iter=self.exact.max_iter,
        )
