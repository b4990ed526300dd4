r"""The order-1 Wasserstein distance between weighted, optionally labelled point clouds.

:class:`DistanceEstimator` validates the inputs, decides how labels enter the ground cost and hands
balanced optimal-transport problems to a solver (subclasses implement :meth:`~DistanceEstimator._unlabelled`
and :meth:`~DistanceEstimator._joint`). Between a source measure :math:`\mu = \sum_i a_i \delta_{(x_i, l_i)}`
and a target measure :math:`\nu = \sum_j b_j \delta_{(y_j, l'_j)}` of equal mass it returns

.. math::
    W_1(\mu, \nu) = \min_{\pi \in \Pi(a, b)} \sum_{i,j} \pi_{ij}
    \big(\|x_i - y_j\|_2 + \lambda \|l_i - l'_j\|_2\big)

(DESIGN §1.3; without labels the second term is absent).

**Soft labels.** A row of ``x_labels`` is a distribution over classes (a column :math:`B e_s` of the
label map). With ``soft_labels="mixture"`` (the default) an atom :math:`(x_i, l_i)` of mass :math:`a_i`
stands for the atoms :math:`(x_i, e_k)` of masses :math:`a_i l_{ik}`: the transformed label is *drawn*
from :math:`l_i`, :math:`t \sim B_{:, s}` (DESIGN §1.2), and every label in the cost is one-hot. With
``soft_labels="vector"`` the soft vector itself is the label coordinate, as in the authors' code
(``cdist(Y_S B^T, Y_T)``); for one-hot labels both conventions coincide.

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

import abc
import math
import time
import warnings
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_LABEL_COST",
    "MASS_RTOL",
    "DistanceEstimator",
    "LabelPath",
    "choose_label_path",
    "feature_diameter",
    "label_marginals",
    "pairwise_distances",
]

DEFAULT_LABEL_COST: float = 1e6
"""λ used when labels are given and ``label_cost`` is ``None`` (standardised features)."""

MASS_RTOL: float = 1e-6
"""Relative tolerance on equal total masses and on equal per-class masses."""

_ROW_SUM_ATOL = 1e-4  # rows of soft labels must sum to 1 within this (mixture convention)

SoftLabels = Literal["mixture", "vector"]


def label_marginals(a: Tensor, labels: Tensor) -> Tensor:
    r"""Mass of each class under weights ``a`` and soft labels ``labels``.

    .. math::
        m_k = \sum_i a_i \, l_{ik}

    Args:
        a: Nonnegative weights, shape ``(n,)``.
        labels: Label vectors (soft or one-hot), shape ``(n, K)``.

    Returns:
        The class masses, shape ``(K,)``, differentiable w.r.t. both arguments.
    """
    return a @ labels  # (n,) @ (n, K) -> (K,)


def feature_diameter(x: Tensor, y: Tensor) -> float:
    r"""Diagonal of the bounding box of :math:`x \cup y`, an upper bound on every pairwise distance.

    .. math::
        D = \big\| \max_{z \in x \cup y} z - \min_{z \in x \cup y} z \big\|_2

    Args:
        x: Points, shape ``(n, d)``.
        y: Points, shape ``(m, d)``.

    Returns:
        :math:`D` as a float (computed without gradient).
    """
    with torch.no_grad():
        lo = torch.minimum(x.min(dim=0).values, y.min(dim=0).values)  # (d,)
        hi = torch.maximum(x.max(dim=0).values, y.max(dim=0).values)  # (d,)
        return float((hi - lo).double().norm())


def pairwise_distances(x: Tensor, y: Tensor) -> Tensor:
    r"""Euclidean distance matrix, differentiable with a zero (not NaN) gradient at coincident points.

    .. math::
        C_{ij} = \|x_i - y_j\|_2

    Args:
        x: Points, shape ``(n, d)``.
        y: Points, shape ``(m, d)``.

    Returns:
        The ``(n, m)`` matrix. For ``d > 25`` torch uses the matrix-product formula, accurate to
        about :math:`\sqrt{\epsilon_{\text{dtype}}}\,\|x\|`; call it in float64 where that matters.
    """
    return torch.cdist(x, y)  # (n, m)


def _label_distances(x_labels: Tensor, y_labels: Tensor) -> Tensor:
    # Direct differences (no |l|² + |l'|² − 2 l·l' cancellation, which λ = 1e6 would amplify).
    return torch.cdist(x_labels, y_labels, compute_mode="donot_use_mm_for_euclid_dist")  # (n, m)


def _is_one_hot(labels: Tensor) -> bool:
    with torch.no_grad():
        binary = bool(((labels == 0) | (labels == 1)).all())
        return binary and bool((labels.sum(dim=1) == 1).all())


class LabelPath(NamedTuple):
    """Which label-aware path applies, and why."""

    path: Literal["per_label", "joint"]
    reason: str


def choose_label_path(
    a: Tensor,
    b: Tensor,
    x_labels: Tensor,
    y_labels: Tensor,
    label_cost: float,
    diameter: float,
    soft_labels: SoftLabels = "mixture",
    rtol: float = MASS_RTOL,
) -> LabelPath:
    r"""Decide whether the labelled problem splits exactly into one problem per class.

    ``"per_label"`` applies when (i) labels are one-hot where the convention needs it (both sides for
    ``soft_labels="vector"``; nothing for ``"mixture"``, whose expanded labels are one-hot by
    construction), (ii) :math:`\lambda\sqrt 2 \ge D`, and (iii) the class masses agree:

    .. math::
        \max_k \big| \textstyle\sum_i a_i l_{ik} - \sum_j b_j l'_{jk} \big|
        \le \text{rtol} \cdot \max\big(\textstyle\sum_i a_i, \sum_j b_j\big).

    Args:
        a: Source weights, shape ``(n,)``.
        b: Target weights, shape ``(m,)``.
        x_labels: Source label vectors, shape ``(n, K)``.
        y_labels: Target label vectors, shape ``(m, K)``.
        label_cost: λ.
        diameter: An upper bound :math:`D` on the feature distances (:func:`feature_diameter`).
        soft_labels: ``"mixture"`` or ``"vector"`` (see the module docstring).
        rtol: Relative tolerance on the class masses.

    Returns:
        The path and a one-line reason.
    """
    if soft_labels == "vector":
        if not _is_one_hot(x_labels):
            return LabelPath("joint", "soft source labels are label coordinates (soft_labels='vector')")
        if not _is_one_hot(y_labels):
            return LabelPath("joint", "soft target labels are label coordinates (soft_labels='vector')")
    if label_cost * math.sqrt(2.0) < diameter:
        return LabelPath(
            "joint", f"label_cost·√2 = {label_cost * math.sqrt(2.0):.4g} < feature diameter {diameter:.4g}"
        )
    with torch.no_grad():
        a64, b64 = a.detach().double(), b.detach().double()
        ms = label_marginals(a64, x_labels.detach().double())  # (K,)
        mt = label_marginals(b64, y_labels.detach().double())  # (K,)
        total = max(float(a64.sum()), float(b64.sum()))
        gap = float((ms - mt).abs().max())
    if gap > rtol * total:
        return LabelPath(
            "joint", f"class masses differ by up to {gap:.3g} (> {rtol:g} × total mass {total:.4g})"
        )
    return LabelPath("per_label", "class masses agree and label_cost·√2 ≥ feature diameter")


def _expand_mixture(z: Tensor, w: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split each atom ``(z_i, l_i)`` into atoms ``(z_i, e_k)`` of mass ``w_i l_ik > 0``."""
    mass = w[:, None] * labels  # (n, K)
    rows, cols = (mass.detach() > 0).nonzero(as_tuple=True)  # (N',), (N',)
    one_hot = torch.nn.functional.one_hot(cols, labels.shape[1]).to(z.dtype)  # (N', K)
    return z[rows], mass[rows, cols], one_hot


class DistanceEstimator(abc.ABC):
    r"""Order-1 Wasserstein distance between two weighted, optionally labelled point clouds.

    Call it as ``W = estimator(x, y, a, b, x_labels, y_labels, label_cost)``; the value is a scalar
    tensor in the dtype of ``x``, differentiable w.r.t. ``x``, ``y``, ``a`` and ``b`` (and the labels).
    After each call :attr:`diagnostics` describes it: ``estimator``, ``n``, ``m``, ``path``
    (``"unlabelled"``, ``"per_label"`` or ``"joint"``), ``path_reason``, ``solver``, ``converged``,
    ``warning``, ``blur`` (absolute, or ``None``), ``scale``, ``backend``, ``num_subproblems``,
    ``seconds``, ``label_cost``, ``diameter``, ``soft_labels`` and ``subproblems`` (one dict each).

    Subclasses implement :meth:`_unlabelled` and :meth:`_joint`; both receive weights that sum to 1
    (the base class multiplies by the total mass, W₁ being 1-homogeneous in the masses).

    Args:
        soft_labels: How a soft source label vector enters the cost: ``"mixture"`` (the label is drawn
            from it; default) or ``"vector"`` (it is a point of the label space, as in the authors'
            code). See the module docstring.
    """

    name: ClassVar[str] = "base"
    higher_is_better: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = True
    soft_labels: SoftLabels = "mixture"  # class default, for subclasses that skip __init__

    def __init__(self, soft_labels: SoftLabels = "mixture") -> None:
        if soft_labels not in ("mixture", "vector"):
            raise ValueError(f"soft_labels must be 'mixture' or 'vector', got {soft_labels!r}")
        self.soft_labels: SoftLabels = soft_labels
        self.diagnostics: dict[str, Any] = {}
        self._records: list[dict[str, Any]] = []
        self._ctx: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(soft_labels={self.soft_labels!r})"

    # ------------------------------------------------------------------ public
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
        start = time.perf_counter()
        x, y, a, b, x_labels, y_labels = _validate(x, y, a, b, x_labels, y_labels, self.soft_labels)
        mass_a, mass_b = a.sum(), b.sum()
        mass = 0.5 * (mass_a + mass_b)
        self._records = []
        self._ctx = {}
        diameter = feature_diameter(x, y)
        self._begin(x, y, a / mass_a, b / mass_b, diameter)

        lam: float | None = None
        if x_labels is None or y_labels is None:
            path, reason = "unlabelled", "no labels"
            value = mass * self._subproblem(x, y, a / mass_a, b / mass_b, None, None, None, tag=None)
        else:
            lam = DEFAULT_LABEL_COST if label_cost is None else float(label_cost)
            if not (math.isfinite(lam) and lam >= 0):
                raise ValueError(f"label_cost must be a finite nonnegative number, got {label_cost!r}")
            path, reason = choose_label_path(a, b, x_labels, y_labels, lam, diameter, self.soft_labels)
            if path == "per_label":
                value = self._per_label(x, y, a, b, x_labels, y_labels)
            else:
                value = self._joint_path(x, y, a, b, x_labels, y_labels, lam)

        self._finish(x, y, path, reason, lam, diameter, time.perf_counter() - start)
        return value

    # ------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def _unlabelled(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """Balanced W₁ between ``(x, a)`` and ``(y, b)`` for the cost ‖x − y‖₂; a and b sum to 1."""

    @abc.abstractmethod
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
        """Balanced W₁ for the cost ‖x − y‖₂ + λ‖l − l'‖₂; a and b sum to 1."""

    def _begin(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, diameter: float) -> None:
        """Per-call set-up on the whole clouds (normalised weights), before any subproblem."""
        self._ctx["diameter"] = diameter

    def _record(self, **info: Any) -> None:
        """Append the solver's report on the current subproblem (``solver``, ``converged``...)."""
        self._records.append(info)

    # --------------------------------------------------------------- internals
    def _subproblem(
        self,
        x: Tensor,
        y: Tensor,
        a: Tensor,
        b: Tensor,
        x_labels: Tensor | None,
        y_labels: Tensor | None,
        label_cost: float | None,
        tag: int | None,
    ) -> Tensor:
        before = len(self._records)
        if x_labels is None or y_labels is None or label_cost is None:
            value = self._unlabelled(x, y, a, b)
        else:
            value = self._joint(x, y, a, b, x_labels, y_labels, label_cost)
        for rec in self._records[before:]:
            rec.setdefault("n", int(x.shape[0]))
            rec.setdefault("m", int(y.shape[0]))
            if tag is not None:
                rec["label"] = tag
        return value

    def _per_label(
        self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, x_labels: Tensor, y_labels: Tensor
    ) -> Tensor:
        mass_src = label_marginals(a, x_labels)  # (K,)
        mass_tgt = label_marginals(b, y_labels)  # (K,)
        with torch.no_grad():
            active = ((mass_src > 0) & (mass_tgt > 0)).nonzero().flatten().tolist()
        value = x.new_zeros(())
        for k in active:
            wa = a * x_labels[:, k]  # (n,)
            wb = b * y_labels[:, k]  # (m,)
            keep_a, keep_b = wa.detach() > 0, wb.detach() > 0
            xs, wa = x[keep_a], wa[keep_a]  # (n_k, d), (n_k,)
            yt, wb = y[keep_b], wb[keep_b]  # (m_k, d), (m_k,)
            m_k = 0.5 * (mass_src[k] + mass_tgt[k])
            value = value + m_k * self._subproblem(
                xs, yt, wa / wa.sum(), wb / wb.sum(), None, None, None, tag=k
            )
        return value

    def _joint_path(
        self,
        x: Tensor,
        y: Tensor,
        a: Tensor,
        b: Tensor,
        x_labels: Tensor,
        y_labels: Tensor,
        label_cost: float,
    ) -> Tensor:
        if self.soft_labels == "mixture":
            x, a, x_labels = _expand_mixture(x, a, x_labels)
            y, b, y_labels = _expand_mixture(y, b, y_labels)
        mass_a, mass_b = a.sum(), b.sum()
        mass = 0.5 * (mass_a + mass_b)
        return mass * self._subproblem(x, y, a / mass_a, b / mass_b, x_labels, y_labels, label_cost, tag=None)

    def _finish(
        self, x: Tensor, y: Tensor, path: str, reason: str, lam: float | None, diameter: float, seconds: float
    ) -> None:
        recs = self._records
        solvers = sorted({str(r.get("solver")) for r in recs})
        failed = [r for r in recs if r.get("converged") is False]
        warning = next((r["warning"] for r in failed if r.get("warning")), None)
        if failed and warning is None:
            warning = "solver did not converge"

        def common(key: str) -> Any:
            values = {r.get(key) for r in recs if r.get(key) is not None}
            return values.pop() if len(values) == 1 else (sorted(values) if values else None)

        self.diagnostics = {
            "estimator": self.name,
            "n": int(x.shape[0]),
            "m": int(y.shape[0]),
            "d": int(x.shape[1]),
            "path": path,
            "path_reason": reason,
            "solver": "+".join(solvers) if solvers else None,
            "converged": not failed,
            "warning": warning,
            "blur": common("blur"),
            "scale": self._ctx.get("scale"),
            "backend": common("backend"),
            "num_subproblems": len(recs),
            "seconds": seconds,
            "label_cost": lam,
            "diameter": diameter,
            "soft_labels": self.soft_labels,
            "subproblems": recs,
        }
        if failed:
            from tta.errors import NumericalWarning

            warnings.warn(
                _non_convergence_message(type(self).__name__, failed, len(recs), warning),
                NumericalWarning,
                stacklevel=3,
            )


def _non_convergence_message(name: str, failed: list[dict[str, Any]], total: int, warning: str) -> str:
    """One message for all the subproblems of a call whose solver did not converge (which, how big, fix)."""
    where = []
    for rec in failed[:5]:
        label = f"class {rec['label']}" if rec.get("label") is not None else "problem"
        where.append(f"{label} ({rec.get('solver', '?')}, n = {rec.get('n', '?')}, m = {rec.get('m', '?')})")
    if len(failed) > 5:
        where.append(f"and {len(failed) - 5} more")
    limits = sorted({int(r["max_iter"]) for r in failed if r.get("max_iter") is not None})
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


def _validate(
    x: Tensor,
    y: Tensor,
    a: Tensor | None,
    b: Tensor | None,
    x_labels: Tensor | None,
    y_labels: Tensor | None,
    soft_labels: SoftLabels,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Check shapes, weights and masses; cast everything to the dtype of ``x``."""
    for nm, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{nm} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{nm} must have shape (num_points, dim), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{nm} has no points")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    n, d = x.shape
    m, d_y = y.shape
    if d != d_y:
        raise ValueError(
            f"x and y must have the same feature dimension: x is {tuple(x.shape)}, y is {tuple(y.shape)}"
        )
    dtype = x.dtype
    y = y.to(dtype)
    a = torch.full((n,), 1.0 / n, dtype=dtype, device=x.device) if a is None else a.to(dtype)
    b = torch.full((m,), 1.0 / m, dtype=dtype, device=x.device) if b is None else b.to(dtype)
    for nm, w, size, pts in (("a", a, n, "x"), ("b", b, m, "y")):
        if w.shape != (size,):
            raise ValueError(f"weights {nm} must have shape ({size},) to match {pts}, got {tuple(w.shape)}")
        with torch.no_grad():
            if not bool(torch.isfinite(w).all()):
                raise ValueError(f"weights {nm} contain NaN or infinite values")
            if bool((w < 0).any()):
                raise ValueError(f"weights {nm} must be nonnegative (min {float(w.min()):.3g})")
    with torch.no_grad():
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            raise ValueError("x and y must be finite (found NaN or infinite coordinates)")
        mass_a, mass_b = float(a.detach().double().sum()), float(b.detach().double().sum())
    if mass_a <= 0 or mass_b <= 0:
        raise ValueError(f"total masses must be positive, got sum(a) = {mass_a:.6g}, sum(b) = {mass_b:.6g}")
    rel = abs(mass_a - mass_b) / max(mass_a, mass_b)
    if rel > MASS_RTOL:
        raise ValueError(
            f"total masses differ: sum(a) = {mass_a:.9g}, sum(b) = {mass_b:.9g} (relative difference "
            f"{rel:.3g} > {MASS_RTOL:g}); W1 here is balanced optimal transport, pass weights of equal "
            "total mass (e.g. both normalised to 1)"
        )
    if (x_labels is None) != (y_labels is None):
        raise ValueError("give both x_labels and y_labels, or neither")
    if x_labels is not None and y_labels is not None:
        for nm, lab, size in (("x_labels", x_labels, n), ("y_labels", y_labels, m)):
            if lab.dim() != 2 or lab.shape[0] != size:
                raise ValueError(f"{nm} must have shape ({size}, num_classes), got {tuple(lab.shape)}")
        if x_labels.shape[1] != y_labels.shape[1]:
            raise ValueError(
                f"x_labels and y_labels must have the same number of classes, got {x_labels.shape[1]} "
                f"and {y_labels.shape[1]}"
            )
        x_labels, y_labels = x_labels.to(dtype), y_labels.to(dtype)
        with torch.no_grad():
            for nm, lab in (("x_labels", x_labels), ("y_labels", y_labels)):
                if not bool(torch.isfinite(lab).all()) or bool((lab < 0).any()):
                    raise ValueError(f"{nm} must be finite and nonnegative")
                if soft_labels == "mixture":
                    dev = float((lab.double().sum(dim=1) - 1).abs().max())
                    if dev > _ROW_SUM_ATOL:
                        raise ValueError(
                            f"rows of {nm} must sum to 1 (they are label distributions); the largest "
                            f"deviation is {dev:.3g}"
                        )
    return x, y, a, b, x_labels, y_labels
