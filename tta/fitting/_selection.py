"""Best-state selection and convergence-based stopping of the transform fit. Pure torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tta import bound as B
from tta.fitting._config import TransformConfig
from tta.fitting._evaluate import evaluate_bound
from tta.fitting._heads import follow
from tta.transforms import TaskTransform, label_map_candidates

__all__ = ["BestTransform", "choose_label_map", "is_selection_step", "selection_subset", "selects_best"]


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


@torch.no_grad()
def choose_label_map(
    transform: TaskTransform,
    head: nn.Linear,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    score: Callable[[TaskTransform], float],
    match_label_marginal: bool = True,
) -> tuple[str, dict[str, float]]:
    r"""Set :math:`(D, B)` to the candidate of lowest bound (``transform.label_map_init: bound``).

    The bound holds for every :math:`(D, B)` with :math:`BD = p_T` (docs/method.md), so the choice is free;
    each candidate of :func:`tta.transforms.label_map_candidates` is written into ``transform`` and scored
    with the current feature map, and the lowest score is kept (ties: the first, ``matching``).

    Args:
        transform: The transform (its prior and label-map logits are overwritten).
        head: The trained reference classifier :math:`h_S`.
        source: Reference training features and labels.
        target: Target training features and labels.
        score: The bound of a transform on the selection data (:meth:`BestTransform.score`).
        match_label_marginal: Refit the label-map bias to :math:`p_T` after writing each candidate.

    Returns:
        The chosen candidate's name and every candidate's score.
    """
    (z_s, y_s), (z_t, y_t) = source, target
    k_s, k_t = transform.num_source_classes, transform.num_target_classes
    p_s, p_t = B.label_prior(y_s, k_s), B.label_prior(y_t, k_t)
    mu_s = torch.stack([z_s[y_s == k].mean(0) for k in range(k_s)])
    mu_t = torch.stack([z_t[y_t == k].mean(0) for k in range(k_t)])
    log_probs = torch.log_softmax(head(z_t), dim=-1)
    scores: dict[str, float] = {}
    states: dict[str, dict[str, Tensor]] = {}
    for name, (prior, label_map) in label_map_candidates(mu_s, mu_t, log_probs, y_t, p_s, p_t).items():
        transform.init_prior(prior.to(transform.prior_logits))
        transform.init_label_map(label_map, 0.0)
        if match_label_marginal:
            transform.match_label_marginal(p_t)
        scores[name] = score(transform)
        states[name] = {k: v.detach().clone() for k, v in transform.state_dict().items()}
    chosen = min(scores, key=lambda k: (scores[k], list(scores).index(k)))
    transform.load_state_dict(states[chosen])
    return chosen, scores
