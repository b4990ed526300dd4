r"""The distance-estimator class: a configured solver over the functional driver.

A :class:`DistanceEstimator` holds its hyper-parameters and nothing of any call. Its one hook is
:meth:`~DistanceEstimator.solve` (one balanced OT problem in, a :class:`~tta.distances.Solution` out);
validation, the label paths, recombination, diagnostics and warnings are the driver's
(:func:`tta.distances.wasserstein_1`), the same for every estimator, built-in or plugin.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from torch import Tensor

from tta.distances._functional import wasserstein_1
from tta.distances._geometry import SoftLabels
from tta.distances._measure import LabelledMeasure
from tta.distances._types import Solution, TransportProblem, W1Result

__all__ = ["DistanceEstimator"]


class DistanceEstimator(abc.ABC):
    r"""Order-1 Wasserstein distance between two weighted, optionally labelled point clouds.

    ``estimator.estimate(source, target, label_cost)`` returns a :class:`~tta.distances.W1Result` (the
    value and its diagnostics); ``estimator(x, y, a, b, x_labels, y_labels, label_cost)`` returns just
    the value, a scalar tensor in the dtype of ``x``, differentiable w.r.t. ``x``, ``y``, ``a`` and
    ``b`` (and the labels).

    A new estimator (e.g. a plugin) subclasses this and implements :meth:`solve`; the tests of
    :class:`tta.testing.DistanceEstimatorTests` and :func:`tta.testing.check_distance_estimator` check it.

    Args:
        soft_labels: How a soft source label vector enters the cost: ``"mixture"`` (the label is drawn
            from it; default) or ``"vector"`` (it is a point of the label space, as in the authors'
            code). See :func:`tta.distances.wasserstein_1`.
    """

    name: ClassVar[str] = "base"
    higher_is_better: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = True
    soft_labels: SoftLabels = "mixture"  # class default, for subclasses that skip __init__

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = [m for m in ("_unlabelled", "_joint", "_begin", "_record") if m in vars(cls)]
        if legacy and cls.solve is DistanceEstimator.solve:  # the old hooks, and no solve
            raise TypeError(
                f"{cls.__qualname__} implements {', '.join(legacy)}, the distance-estimator hooks of tta "
                "before 0.1: implement solve(self, problem) -> tta.distances.Solution instead (problem."
                "source / problem.target are LabelledMeasures of mass 1, problem.label_cost is None for the "
                "cost ‖x − y‖ and λ for the joint cost); see docs/plugins.md, 'Distance estimators'."
            )

    def __init__(self, soft_labels: SoftLabels = "mixture") -> None:
        if soft_labels not in ("mixture", "vector"):
            raise ValueError(f"soft_labels must be 'mixture' or 'vector', got {soft_labels!r}")
        self.soft_labels: SoftLabels = soft_labels
        self._last: W1Result | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(soft_labels={self.soft_labels!r})"

    # ------------------------------------------------------------------ the hook
    @abc.abstractmethod
    def solve(self, problem: TransportProblem) -> Solution:
        r"""Solve one balanced OT problem: the one method an estimator implements.

        Args:
            problem: Source and target measures of mass 1; ``problem.label_cost`` is ``None`` for the
                cost :math:`\|x - y\|_2` and λ for :math:`\|x - y\|_2 + \lambda\|l - l'\|_2` (then both
                measures carry labels). ``problem.context`` holds the whole call's measures, diameter,
                lazily computed data scale and a ``memo`` dict for per-call values.

        Returns:
            The value (differentiable where the estimator supports it) and one
            :class:`~tta.distances.SolverReport` per solve run.
        """

    # ---------------------------------------------------------------- public API
    def estimate(
        self, source: LabelledMeasure, target: LabelledMeasure, label_cost: float | None = None
    ) -> W1Result:
        r""":math:`W_1(\mu, \nu)` with its diagnostics.

        Args:
            source: Source measure :math:`\mu`.
            target: Target measure :math:`\nu` of the same total mass.
            label_cost: λ in the ground cost; ``None`` means ``1e6``. Ignored without labels.

        Returns:
            The :class:`~tta.distances.W1Result`.
        """
        result = self._compute(source, target, label_cost)
        self._last = result
        return result

    def _overrides_solve(self, owner: type[DistanceEstimator]) -> bool:
        """Whether a subclass of ``owner`` (a built-in) replaced its :meth:`solve`."""
        return type(self).solve is not owner.solve

    def _compute(
        self, source: LabelledMeasure, target: LabelledMeasure, label_cost: float | None
    ) -> W1Result:
        # Built-in estimators override this to call their functional form (exact_w1, sinkhorn_w1...),
        # and fall back here when a subclass overrides solve (its hook must be the one that runs).
        return wasserstein_1(
            source,
            target,
            self.solve,
            label_cost=label_cost,
            soft_labels=self.soft_labels,
            estimator=self.name,
        )

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        a: Tensor | None = None,
        b: Tensor | None = None,
        x_labels: Tensor | None = None,
        y_labels: Tensor | None = None,
        label_cost: float | None = None,
    ) -> Tensor:
        """Compute :math:`W_1` between ``(x, a[, x_labels])`` and ``(y, b[, y_labels])``.

        Args:
            x: Source points, shape ``(n, d)``.
            y: Target points, shape ``(m, d)``.
            a: Nonnegative source weights, shape ``(n,)``; ``None`` means ``1/n`` each.
            b: Nonnegative target weights, shape ``(m,)``; ``None`` means ``1/m`` each. The total
                masses of ``a`` and ``b`` must agree within a relative ``1e-6``.
            x_labels: Source label vectors, shape ``(n, K)`` (rows sum to 1), or ``None``.
            y_labels: Target label vectors, shape ``(m, K)`` (one-hot), or ``None``; give both label
                tensors or neither.
            label_cost: λ in the ground cost; ``None`` means ``1e6``. Ignored without labels.

        Returns:
            The scalar :math:`W_1`, in the dtype of ``x``.

        Raises:
            ValueError: On malformed shapes, negative weights, unequal total masses or one-sided labels.
        """
        return self.estimate(
            LabelledMeasure(x, a, x_labels), LabelledMeasure(y, b, y_labels), label_cost
        ).value

    @property
    def last_result(self) -> W1Result | None:
        """The result of the latest call, for interactive inspection (tta itself uses :meth:`estimate`)."""
        return getattr(self, "_last", None)

    @property
    def diagnostics(self) -> dict[str, Any]:
        """:meth:`W1Result.to_dict` of the latest call (``{}`` before the first); see :attr:`last_result`."""
        last = self.last_result
        return {} if last is None else last.to_dict()
