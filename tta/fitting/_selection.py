"""Best-state selection and convergence-based stopping of the transform fit. Pure torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tta.fitting._config import TransformConfig
from tta.fitting._evaluate import evaluate_bound
from tta.fitting._heads import follow
from tta.transforms import TaskTransform

__all__ = ["BestTransform", "is_selection_step", "selection_subset", "selects_best"]


def selection_subset(data: tuple[Tensor, Tensor], points: int, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed, seeded subset of at most ``points`` rows of ``(features, labels)`` holding every class.

    One random row of each class is taken first (so that a task with many classes, e.g. 1000 reference
    classes and ``points = 2000``, keeps them all), then the rest at random; when there are more classes
    than ``points``, the subset grows to one row per class.
    """
    z, y = data
    if z.shape[0] <= points:
        return z, y
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(z.shape[0], generator=generator)
    labels = y.detach().cpu()[perm]
    first = torch.ones_like(labels, dtype=torch.bool)  # first occurrence of each class along perm
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    first_sorted = torch.ones_like(first)
    first_sorted[1:] = sorted_labels[1:] != sorted_labels[:-1]
    first[order] = first_sorted
    rest = perm[~first][: max(points - int(first.sum()), 0)]
    idx = torch.sort(torch.cat([perm[first], rest])).values
    return z[idx.to(z.device)], y[idx.to(y.device)]


class BestTransform:
    """Keeps the transform state with the lowest bound on a fixed selection subset of the training data.

    The ``tta`` algorithm takes stochastic steps; scoring the full bound every few steps and returning
    the best state seen (the initial one included) makes the learned bound never worse than the
    initial one on that subset — a guarantee the authors' objective lacks (DESIGN §1.7).

    Args:
        head: The reference classifier.
        source: Reference training features and labels.
        target: Target training features and labels.
        distance: A :class:`tta.distances.DistanceEstimator`.
        config: The transform configuration (``select_points``, ``label_cost``).
        seed: Seed of the subset.
    """

    def __init__(
        self,
        head: nn.Linear,
        source: tuple[Tensor, Tensor],
        target: tuple[Tensor, Tensor],
        distance: Any,
        config: TransformConfig,
        seed: int = 0,
    ):
        self.head = head
        self.source = selection_subset(source, config.select_points, seed)
        self.target = selection_subset(target, config.select_points, seed + 1)
        self.distance = distance
        self.label_cost = config.label_cost
        self.value = float("inf")
        self.step = -1
        self.state: dict[str, Tensor] | None = None
        self.min_improvement = config.min_improvement
        self.patience = config.patience
        self.stale = 0  # consecutive updates without a relative improvement > min_improvement

    def score(self, transform: TaskTransform) -> float:
        """The bound of ``transform`` on the selection subset (exact inverse, joint W₁)."""
        self.source, self.target = (
            follow(self.source, transform.matrix),
            follow(self.target, transform.matrix),
        )
        res = evaluate_bound(
            transform,
            self.head,
            self.source,
            self.target,
            self.distance,
            label_cost=self.label_cost,
            diagnostics=False,
            terms_only=True,
        )
        return float(res.bound)

    def update(self, transform: TaskTransform, step: int) -> float:
        """Score ``transform`` and keep a copy of its state if it is the best so far."""
        value = self.score(transform)
        progress = self.value == float("inf") or value < self.value - self.min_improvement * abs(self.value)
        self.stale = 0 if progress else self.stale + 1
        if value < self.value:
            self.value, self.step = value, step
            self.state = {k: v.detach().clone() for k, v in transform.state_dict().items()}
        return value

    @property
    def converged(self) -> bool:
        """Whether convergence-based stopping ends the fit: ``patience`` (> 0) stale updates in a row."""
        return self.patience > 0 and self.stale >= self.patience

    def restore(self, transform: TaskTransform) -> None:
        """Load the best state into ``transform`` (no-op if nothing was scored)."""
        if self.state is not None:
            transform.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints."""
        return {"value": self.value, "step": self.step, "state": self.state, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From checkpoints."""
        self.value, self.step, self.state = state["value"], state["step"], state["state"]
        self.stale = int(state.get("stale", 0))


def selects_best(config: TransformConfig) -> bool:
    """Whether the fit keeps the best transform state (``tta`` algorithm with ``select_every > 0``)."""
    return config.algorithm == "tta" and config.select_every > 0 and config.mode != "fixed_all"


def is_selection_step(config: TransformConfig, step: int) -> bool:
    """Whether the state after transform step ``step`` (0-based) is scored."""
    return (step + 1) % config.select_every == 0 or step + 1 == config.steps
