r"""The labelled measures an order-1 Wasserstein distance compares, and their validation.

A :class:`LabelledMeasure` is a weighted point cloud with optional label vectors,

.. math::
    \mu = \sum_{i=1}^n a_i \, \delta_{(x_i, l_i)}, \qquad a_i \ge 0,\ l_i \in \Delta_{K-1},

the one argument type of every estimator and solver in :mod:`tta.distances` (instead of the points,
weights and labels of each side passed separately).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from tta.distances._geometry import MASS_RTOL, SoftLabels

__all__ = ["LabelledMeasure", "validate_pair"]

_ROW_SUM_ATOL = 1e-4  # rows of soft labels must sum to 1 within this (mixture convention)


@dataclass(frozen=True)
class LabelledMeasure:
    r"""A weighted, optionally labelled point cloud :math:`\sum_i a_i \delta_{(x_i, l_i)}`.

    Args:
        points: The points :math:`x_i`, shape ``(n, d)``.
        weights: Nonnegative weights :math:`a_i`, shape ``(n,)``; ``None`` means ``1/n`` each.
        labels: Label vectors :math:`l_i` (rows sum to 1; one-hot for hard labels), shape ``(n, K)``, or
            ``None`` for an unlabelled measure.

    Example:
        >>> import torch
        >>> from tta.distances import LabelledMeasure, exact_w1
        >>> x = torch.zeros(1, 2, dtype=torch.float64)
        >>> float(exact_w1(LabelledMeasure(x), LabelledMeasure(x + 1)).value)  # doctest: +ELLIPSIS
        1.414...
    """

    points: Tensor
    weights: Tensor | None = None
    labels: Tensor | None = None

    @property
    def num_points(self) -> int:
        """:math:`n`."""
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        """:math:`d`."""
        return int(self.points.shape[1])

    @property
    def labelled(self) -> bool:
        """Whether the measure carries label vectors."""
        return self.labels is not None

    @property
    def mass(self) -> Tensor:
        r"""The total mass :math:`\sum_i a_i` (differentiable; 1 for uniform weights)."""
        if self.weights is None:
            return torch.ones((), dtype=self.points.dtype, device=self.points.device)
        return self.weights.sum()

    def replace(self, **changes: Tensor | None) -> LabelledMeasure:
        """A copy with some fields replaced (``points``, ``weights``, ``labels``)."""
        return dataclasses.replace(self, **changes)

    def normalised(self) -> LabelledMeasure:
        """The same measure with weights summing to 1 (uniform weights made explicit)."""
        n = self.num_points
        if self.weights is None:
            w = torch.full((n,), 1.0 / n, dtype=self.points.dtype, device=self.points.device)
            return self.replace(weights=w)
        return self.replace(weights=self.weights / self.weights.sum())

    def select(self, keep: Tensor) -> LabelledMeasure:
        """The atoms where the boolean (or index) tensor ``keep`` selects them."""
        return LabelledMeasure(
            self.points[keep],
            None if self.weights is None else self.weights[keep],
            None if self.labels is None else self.labels[keep],
        )


def validate_pair(
    source: LabelledMeasure, target: LabelledMeasure, soft_labels: SoftLabels = "mixture"
) -> tuple[LabelledMeasure, LabelledMeasure]:
    """Check the shapes, weights, masses and labels of two measures for a balanced W₁.

    In messages the source is ``x`` (weights ``a``, labels ``x_labels``) and the target ``y`` (``b``,
    ``y_labels``), the names of :meth:`tta.distances.DistanceEstimator.__call__`.

    Args:
        source: The source measure.
        target: The target measure.
        soft_labels: ``"mixture"`` requires label rows to sum to 1; ``"vector"`` does not.

    Returns:
        Both measures with explicit weights, everything cast to the dtype of the source points.

    Raises:
        TypeError: If the points are not tensors.
        ValueError: On malformed shapes, non-finite values, negative weights, unequal total masses, or
            labels on one side only.
    """
    for side, nm in ((source, "source"), (target, "target")):
        if not isinstance(side, LabelledMeasure):
            raise TypeError(f"the {nm} must be a tta.distances.LabelledMeasure, got {type(side).__name__}")
    x, a, x_labels = source.points, source.weights, source.labels
    y, b, y_labels = target.points, target.weights, target.labels
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
    return LabelledMeasure(x, a, x_labels), LabelledMeasure(y, b, y_labels)
