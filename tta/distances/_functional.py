r"""The W₁ driver: validation, the label paths, and the assembly of a :class:`W1Result`.

:func:`wasserstein_1` computes, for any solver of balanced OT problems,

.. math::
    W_1(\mu, \nu) = \min_{\pi \in \Pi(a, b)} \sum_{i,j} \pi_{ij}
    \big(\|x_i - y_j\|_2 + \lambda \|l_i - l'_j\|_2\big)

(DESIGN §1.3; without labels the second term is absent).

**Soft labels.** A row of the source labels is a distribution over classes (a column :math:`B e_s` of
the label map). With ``soft_labels="mixture"`` (the default) an atom :math:`(x_i, l_i)` of mass
:math:`a_i` stands for the atoms :math:`(x_i, e_k)` of masses :math:`a_i l_{ik}`: the transformed label
is *drawn* from :math:`l_i`, :math:`t \sim B_{:, s}` (DESIGN §1.2), and every label in the cost is
one-hot. With ``soft_labels="vector"`` the soft vector itself is the label coordinate, as in the authors'
code (``cdist(Y_S B^T, Y_T)``); for one-hot labels both conventions coincide.

**Paths.** ``"per_label"`` (exact and fast): when the per-class masses of the two sides agree and
:math:`\lambda\sqrt 2 \ge` the feature diameter :math:`D`, no optimal plan moves mass across labels, and

.. math::
    W_1(\mu, \nu) = \sum_k m_k \, W_1\big(\mu_k / m_k, \; \nu_k / m_k\big),

where :math:`\mu_k = \sum_i a_i l_{ik} \delta_{x_i}` and :math:`m_k` is its mass (proof: take for
each class an optimal 1-Lipschitz potential, centred so its range over the support lies in
:math:`[-D/2, D/2]`; together they are feasible for the joint dual because
:math:`D \le \lambda\sqrt 2`, so the joint value is at least the sum; the block-diagonal plan attains
it). Class masses that agree within ``1e-6`` of the total count as equal: the joint EMD would add
:math:`\lambda\sqrt2\,\delta` for a round-off gap :math:`\delta` (already 0.01 at λ = 1e6 for float32
round-off), an artefact of λ standing in for ∞ that this path drops. ``"joint"`` otherwise: one problem
on the full cost above; with soft labels (mixture) it has up to :math:`nK` source atoms, so it is
slow for large problems (Sinkhorn at n = m = 1000, d = 1280, K = 10: about 5 minutes on 2 CPU cores,
against about 1 s on the per-label path): make the class masses match where you can.

References:
    .. [1] A. Mehra, Y. Zhang, J. Hamm. Analysis of Task Transferability in Large Pre-trained
       Classifiers. arXiv:2307.00823, 2023.
    .. [2] D. Alvarez-Melis, N. Fusi. Geometric Dataset Distances via Optimal Transport. NeurIPS 2020.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from tta.distances._geometry import (
    DEFAULT_LABEL_COST,
    SoftLabels,
    choose_label_path,
    expand_mixture,
    feature_diameter,
    label_marginals,
)
from tta.distances._measure import LabelledMeasure, validate_pair
from tta.distances._types import CallContext, Solution, SolverReport, TransportProblem, W1Result

__all__ = ["PerLabelSolver", "Solver", "wasserstein_1"]

Solver = Callable[[TransportProblem], Solution]
"""A solver of one balanced OT problem (the plugin hook :meth:`DistanceEstimator.solve`)."""

PerLabelSolver = Callable[[LabelledMeasure, LabelledMeasure, CallContext], "Solution | None"]
"""A solver of the whole per-label decomposition at once (a fast path), or ``None`` to decline it."""


def wasserstein_1(
    source: LabelledMeasure,
    target: LabelledMeasure,
    solve: Solver,
    *,
    label_cost: float | None = None,
    soft_labels: SoftLabels = "mixture",
    estimator: str = "custom",
    per_label: PerLabelSolver | None = None,
) -> W1Result:
    r""":math:`W_1(\mu, \nu)` with any solver of balanced OT problems (see the module docstring).

    The driver validates the measures, chooses the label path, splits the call into balanced problems
    of mass 1 for ``solve`` (W₁ is 1-homogeneous in the masses), recombines their values and
    variances, and warns once (:class:`tta.errors.NumericalWarning`) when a solve did not converge.

    Args:
        source: Source measure :math:`\mu`.
        target: Target measure :math:`\nu`; total masses must agree within a relative ``1e-6``; give
            labels on both sides or neither.
        solve: The solver of one :class:`TransportProblem`.
        label_cost: λ in the ground cost; ``None`` means ``1e6``. Ignored without labels.
        soft_labels: ``"mixture"`` or ``"vector"`` (module docstring).
        estimator: Name recorded in the result.
        per_label: Optional fast path for the whole per-label decomposition (it returns the weighted
            sum :math:`\sum_k m_k W_1^{(k)}` and one report per class, or ``None`` to use ``solve`` per
            class).

    Returns:
        The :class:`W1Result`; its value is a scalar in the dtype of the source points.

    Raises:
        ValueError: On malformed shapes, negative weights, unequal total masses, one-sided labels or
            a bad ``label_cost``.
    """
    start = time.perf_counter()
    if soft_labels not in ("mixture", "vector"):
        raise ValueError(f"soft_labels must be 'mixture' or 'vector', got {soft_labels!r}")
    source, target = validate_pair(source, target, soft_labels)
    x, y = source.points, target.points
    mass_a, mass_b = source.mass, target.mass
    mass = 0.5 * (mass_a + mass_b)
    diameter = feature_diameter(x, y)
    context = CallContext(source.normalised(), target.normalised(), diameter)
    unlabelled = (context.source.replace(labels=None), context.target.replace(labels=None))

    lam: float | None = None
    if not source.labelled:
        path, reason = "unlabelled", "no labels"
        sol = _solve(solve, TransportProblem(*unlabelled, None, None, context))
        value, variance, reports = mass * sol.value, float(mass.detach()) ** 2 * sol.variance, sol.reports
    else:
        lam = DEFAULT_LABEL_COST if label_cost is None else float(label_cost)
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"label_cost must be a finite nonnegative number, got {label_cost!r}")
        assert source.weights is not None and target.weights is not None  # validated
        assert source.labels is not None and target.labels is not None
        path, reason = choose_label_path(
            source.weights, target.weights, source.labels, target.labels, lam, diameter, soft_labels
        )
        if path == "per_label":
            fast = per_label(source, target, context) if per_label is not None else None
            if fast is not None:
                value, variance, reports = fast.value, fast.variance, fast.reports
            else:
                value, variance, reports = _per_label(solve, source, target, context)
        else:
            joint_src, joint_tgt = source, target
            if soft_labels == "mixture":
                joint_src = LabelledMeasure(*expand_mixture(x, source.weights, source.labels))
                joint_tgt = LabelledMeasure(*expand_mixture(y, target.weights, target.labels))
            m_joint = 0.5 * (joint_src.mass + joint_tgt.mass)
            problem = TransportProblem(joint_src.normalised(), joint_tgt.normalised(), lam, None, context)
            sol = _solve(solve, problem)
            value = m_joint * sol.value
            variance, reports = float(m_joint.detach()) ** 2 * sol.variance, sol.reports

    result = W1Result(
        value=value.to(x.dtype),
        estimator=estimator,
        n=source.num_points,
        m=target.num_points,
        d=source.dim,
        path=path,
        path_reason=reason,
        label_cost=lam,
        diameter=diameter,
        soft_labels=soft_labels,
        seconds=time.perf_counter() - start,
        subproblems=tuple(reports),
        scale=context.scale_if_computed,
        variance=variance,
    )
    if result.failed:
        from tta.errors import NumericalWarning

        warnings.warn(non_convergence_message(estimator, result), NumericalWarning, stacklevel=3)
    return result


def _solve(solve: Solver, problem: TransportProblem) -> Solution:
    """Run one solve; fill in the problem's size and class on reports that leave them out."""
    sol = solve(problem)
    if not isinstance(sol, Solution):
        raise TypeError(
            f"a distance solver must return a tta.distances.Solution, got {type(sol).__name__} "
            "(wrap the value: Solution(value, (SolverReport('name'),)))"
        )
    n, m = problem.source.num_points, problem.target.num_points
    reports = tuple(
        r.replace(
            n=n if r.n is None else r.n,
            m=m if r.m is None else r.m,
            label=problem.label if r.label is None else r.label,
        )
        for r in sol.reports
    )
    return Solution(sol.value, reports, sol.variance)


def _per_label(
    solve: Solver, source: LabelledMeasure, target: LabelledMeasure, context: CallContext
) -> tuple[Tensor, float, tuple[SolverReport, ...]]:
    """The per-label decomposition, one ``solve`` per class present on both sides."""
    a, b, x_labels, y_labels = source.weights, target.weights, source.labels, target.labels
    assert a is not None and b is not None and x_labels is not None and y_labels is not None
    mass_src = label_marginals(a, x_labels)  # (K,)
    mass_tgt = label_marginals(b, y_labels)  # (K,)
    with torch.no_grad():
        active = ((mass_src > 0) & (mass_tgt > 0)).nonzero().flatten().tolist()
    value, variance, reports = source.points.new_zeros(()), 0.0, []
    for k in active:
        wa, wb = a * x_labels[:, k], b * y_labels[:, k]  # (n,), (m,)
        keep_a, keep_b = wa.detach() > 0, wb.detach() > 0
        wa, wb = wa[keep_a], wb[keep_b]
        problem = TransportProblem(
            LabelledMeasure(source.points[keep_a], wa / wa.sum()),
            LabelledMeasure(target.points[keep_b], wb / wb.sum()),
            None,
            k,
            context,
        )
        sol = _solve(solve, problem)
        m_k = 0.5 * (mass_src[k] + mass_tgt[k])
        value = value + m_k * sol.value
        variance += float(m_k.detach()) ** 2 * sol.variance
        reports.extend(sol.reports)
    return value, variance, tuple(reports)


def non_convergence_message(name: str, result: W1Result) -> str:
    """One message for all the subproblems of a call whose solver did not converge (which, how big, fix)."""
    failed, total, warning = result.failed, len(result.subproblems), result.warning
    where = []
    for rec in failed[:5]:
        label = f"class {rec.label}" if rec.label is not None else "problem"
        where.append(f"{label} ({rec.solver}, n = {rec.n}, m = {rec.m})")
    if len(failed) > 5:
        where.append(f"and {len(failed) - 5} more")
    limits = sorted({int(r.max_iter) for r in failed if r.max_iter is not None})
    if limits:
        fix = (
            f"raise max_iter (the network-simplex iteration limit, POT's numItermax; now "
            f"{', '.join(map(str, limits))}) or use the 'sinkhorn' estimator"
        )
    else:
        fix = "use the 'exact' estimator (problems up to a few thousand points per side) or a larger blur"
    return (
        f"{name}: the OT solver did not converge in {len(failed)} of {total} subproblem(s): "
        f"{', '.join(where)} ({warning}); the returned W1 is unreliable. Fix: {fix}."
    )
