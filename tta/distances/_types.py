r"""Typed inputs and outputs of the W₁ solvers: one subproblem, one solve, one call.

- :class:`TransportProblem`: one balanced OT problem handed to a solver (both measures normalised to
  mass 1), with the :class:`CallContext` of the call it belongs to.
- :class:`Solution`: what a solver returns: the value, one :class:`SolverReport` per solve it ran and,
  for a Monte-Carlo solver, the variance of its estimate.
- :class:`W1Result`: what a call returns (frozen, like POT's ``OTResult``): the value
  :math:`W_1(\mu, \nu)` and its diagnostics (:meth:`W1Result.to_dict` is the plain-dict form that goes
  into ``result.json``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from tta.distances._geometry import data_scale
from tta.distances._measure import LabelledMeasure

__all__ = ["CallContext", "Solution", "SolverReport", "TransportProblem", "W1Result"]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class SolverReport:
    """One solve of one OT problem, as the solver reports it.

    Args:
        solver: Short name of the method (``"exact"``, ``"sinkhorn"``, ``"sliced"``...).
        converged: Whether the solve reached its stopping criterion (a non-converged solve makes the
            call warn once, with a :class:`tta.errors.NumericalWarning`).
        warning: The solver's own message when it did not converge.
        seconds: Wall time of the solve.
        n: Source atoms of the problem (filled in by the driver when left ``None``).
        m: Target atoms of the problem (likewise).
        label: The class of a per-label subproblem (filled in by the driver).
        blur: Absolute blur of an entropic solver, else ``None``.
        backend: Backend that ran it (``"tensorized"``, ``"online"``...), else ``None``.
        max_iter: Iteration limit of an iterative solver, else ``None``.
        extra: Anything else worth keeping (plain values), e.g. POT's ``result_code``.
    """

    solver: str
    converged: bool = True
    warning: str | None = None
    seconds: float = 0.0
    n: int | None = None
    m: int | None = None
    label: int | None = None
    blur: float | None = None
    backend: str | None = None
    max_iter: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))

    def replace(self, **changes: Any) -> SolverReport:
        """A copy with some fields replaced; ``extra`` entries given as ``extra={...}`` are merged."""
        if "extra" in changes:
            changes["extra"] = {**self.extra, **changes["extra"]}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: the fields that are set, then ``extra`` flattened into it."""
        out: dict[str, Any] = {
            "solver": self.solver,
            "converged": self.converged,
            "warning": self.warning,
            "seconds": self.seconds,
        }
        for key in ("n", "m", "label", "blur", "backend", "max_iter"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Solution:
    """A solver's answer to one :class:`TransportProblem`.

    Args:
        value: The balanced :math:`W_1` of the (normalised) problem, a scalar tensor, differentiable
            w.r.t. whatever the solver supports.
        reports: One :class:`SolverReport` per solve run (a Monte-Carlo solver may run several).
        variance: Variance of ``value`` as an estimate of its expectation (0 for a deterministic
            solver), combined by the driver over the subproblems.
    """

    value: Tensor
    reports: tuple[SolverReport, ...] = ()
    variance: float = 0.0


class CallContext:
    """Per-call facts shared by the subproblems of one W₁ call (never kept on an estimator).

    Args:
        source: The whole source measure, weights normalised to 1.
        target: The whole target measure, weights normalised to 1.
        diameter: :func:`tta.distances.feature_diameter` of the two point clouds.

    Attributes:
        memo: A dict for a solver's own per-call values (e.g. random directions drawn once per call).
    """

    def __init__(self, source: LabelledMeasure, target: LabelledMeasure, diameter: float) -> None:
        self.source = source
        self.target = target
        self.diameter = diameter
        self.memo: dict[Any, Any] = {}

    @functools.cached_property
    def scale(self) -> float:
        """:func:`tta.distances.data_scale` of the whole clouds, computed on first use."""
        return data_scale(self.source.points, self.target.points, self.source.weights, self.target.weights)

    @property
    def scale_if_computed(self) -> float | None:
        """:attr:`scale` if a solver used it in this call, else ``None``."""
        return self.__dict__.get("scale")


@dataclass(frozen=True)
class TransportProblem:
    r"""One balanced OT problem: both measures have mass 1.

    ``label_cost is None``: the cost is :math:`\|x - y\|_2` and labels are ignored. Otherwise both
    measures carry labels and the cost is :math:`\|x - y\|_2 + \lambda\|l - l'\|_2` (the joint path).

    Args:
        source: Source measure (weights sum to 1).
        target: Target measure (weights sum to 1).
        label_cost: λ of the joint cost, or ``None``.
        label: The class of a per-label subproblem, else ``None``.
        context: The call this problem belongs to.
    """

    source: LabelledMeasure
    target: LabelledMeasure
    label_cost: float | None
    label: int | None
    context: CallContext

    @property
    def labelled(self) -> bool:
        """Whether the cost has a label term (the joint path)."""
        return self.label_cost is not None


@dataclass(frozen=True)
class W1Result:
    r"""The order-1 Wasserstein distance of one call, with how it was computed.

    Args:
        value: :math:`W_1(\mu, \nu)`, a scalar tensor in the dtype of the source points.
        estimator: Name of the estimator (``"exact"``, ``"sinkhorn"``...).
        n: Source atoms.
        m: Target atoms.
        d: Feature dimension.
        path: ``"unlabelled"``, ``"per_label"`` or ``"joint"``.
        path_reason: Why that path.
        label_cost: λ (``None`` without labels).
        diameter: Feature diameter of the call.
        soft_labels: ``"mixture"`` or ``"vector"``.
        seconds: Wall time of the call.
        subproblems: The solvers' reports, in order.
        scale: Data scale of the call if an entropic solver used it, else ``None``.
        variance: Variance of ``value`` as an estimate (0 when every solve was deterministic).
        extra: Estimator-specific summary (e.g. the subsample estimator's confidence interval).
    """

    value: Tensor
    estimator: str
    n: int
    m: int
    d: int
    path: str
    path_reason: str
    label_cost: float | None
    diameter: float
    soft_labels: str
    seconds: float
    subproblems: tuple[SolverReport, ...]
    scale: float | None = None
    variance: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))

    def __float__(self) -> float:
        return float(self.value.detach())

    def replace(self, **changes: Any) -> W1Result:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def failed(self) -> tuple[SolverReport, ...]:
        """The subproblem reports whose solver did not converge."""
        return tuple(r for r in self.subproblems if not r.converged)

    @property
    def converged(self) -> bool:
        """Whether every solve converged."""
        return not self.failed

    @property
    def warning(self) -> str | None:
        """The first solver warning of a failed solve (``None`` when all converged)."""
        failed = self.failed
        if not failed:
            return None
        return next((r.warning for r in failed if r.warning), "solver did not converge")

    @property
    def solver(self) -> str | None:
        """The solvers used, ``+``-joined and sorted (``"exact+sinkhorn"``)."""
        names = sorted({r.solver for r in self.subproblems})
        return "+".join(names) if names else None

    def _common(self, key: str) -> Any:
        values = {getattr(r, key) for r in self.subproblems if getattr(r, key) is not None}
        return values.pop() if len(values) == 1 else (sorted(values) if values else None)

    @property
    def blur(self) -> float | list[float] | None:
        """The absolute blur (one value, or the sorted distinct values), ``None`` for exact solves."""
        return self._common("blur")

    @property
    def backend(self) -> str | list[str] | None:
        """The backend (one value, or the sorted distinct values)."""
        return self._common("backend")

    @property
    def sem(self) -> float:
        """Standard error of the value as an estimate (0 when deterministic)."""
        if math.isnan(self.variance):  # a single Monte-Carlo replicate: no variance estimate
            return math.nan
        return math.sqrt(self.variance) if self.variance > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The diagnostics as a plain dict (the ``distance`` entry of a bound report)."""
        return {
            "estimator": self.estimator,
            "n": self.n,
            "m": self.m,
            "d": self.d,
            "path": self.path,
            "path_reason": self.path_reason,
            "solver": self.solver,
            "converged": self.converged,
            "warning": self.warning,
            "blur": self.blur,
            "scale": self.scale,
            "backend": self.backend,
            "num_subproblems": len(self.subproblems),
            "seconds": self.seconds,
            "label_cost": self.label_cost,
            "diameter": self.diameter,
            "soft_labels": self.soft_labels,
            "subproblems": [r.to_dict() for r in self.subproblems],
            **self.extra,
        }
