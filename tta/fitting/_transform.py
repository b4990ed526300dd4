"""Learning the transform, one optimiser step at a time. Pure torch.

:class:`TransformFitter` owns everything the transform phase keeps between steps: the optimiser, the
cond(A) guard, the best-state selection and convergence-based stopping. :func:`learn_transform` (the
Python API) and :class:`tta.modules.TaskTransferAnalysis` (``tta fit``) both run its
:meth:`~TransformFitter.step`, so a seed gives the same transform either way.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta import bound as B
from tta.fitting._config import TransformConfig
from tta.fitting._heads import Backward, _backward, follow
from tta.fitting._health import ConditionGuard, WarningLog, check_finite_gradients
from tta.fitting._objective import finish_transform, step_objective, transform_optimizer
from tta.fitting._selection import BestTransform, choose_label_map, is_selection_step, selects_best
from tta.transforms import TaskTransform

__all__ = ["TransformFitter", "learn_transform"]


class TransformFitter:
    """The transform phase: one :meth:`step` per optimiser step, then :meth:`finish`.

    A step computes the configured objective on seeded batches (:func:`~tta.fitting.step_objective`),
    takes one Adam step, checks cond(A) when due (:class:`~tta.fitting.ConditionGuard`) and scores the
    state on the selection subset when due (:class:`~tta.fitting.BestTransform`). The phase stops early
    (later steps return ``None``) when cond(A) exceeds ``max_condition`` or the selection bound stopped
    improving (``patience``). :meth:`finish` restores the best state and refits the label-map bias.

    Args:
        transform: The transform to learn, in place; initialised already
            (:func:`~tta.fitting.initialise_transform`).
        head: The trained reference classifier :math:`h_S`.
        source: Reference training features and labels.
        target: Target training features and labels.
        distance: A :class:`tta.distances.DistanceEstimator`.
        config: Hyper-parameters.
        seed: Seed of the batches and of the selection subset.
        warning_log: Where the numerical warnings of the phase are recorded (a new log by default).
    """

    name = "transform"

    def __init__(
        self,
        transform: TaskTransform,
        head: nn.Linear,
        source: tuple[Tensor, Tensor],
        target: tuple[Tensor, Tensor],
        distance: Any,
        config: TransformConfig | None = None,
        seed: int = 0,
        warning_log: WarningLog | None = None,
    ):
        self.config = config = config or TransformConfig()
        wanted = "logit" if config.variant == "logit" else "dense"
        if transform.feature_map != wanted:
            raise ValueError(
                f"transform.variant {config.variant!r} learns a TaskTransform with feature_map={wanted!r}, "
                f"got feature_map={transform.feature_map!r}: build it as "
                f"TaskTransform(..., feature_map={wanted!r})"
            )
        self.transform = transform
        self.head = head
        self.source = source
        self.target = target
        self.distance = distance
        self.seed = seed
        self.warning_log = warning_log if warning_log is not None else WarningLog()
        self.optimizer = transform_optimizer(transform, config)
        # the logit variant learns no d x d matrix while fitting (A is written once, at the end)
        self.guard = ConditionGuard(config if wanted == "dense" else replace(config, max_condition=None))
        self.best = (
            BestTransform(head, source, target, distance, config, seed) if selects_best(config) else None
        )
        self.target_prior = B.label_prior(target[1], transform.num_target_classes)
        self.started = False
        self.finished = False
        #: The first transform step not run, when the phase stopped early (``None``: it ran every step).
        self.stopped_at: int | None = None
        self._class_losses: Tensor | None = None
        #: ``label_map_init: bound``: the candidate kept and every candidate's selection bound.
        self.label_map_choice: dict[str, Any] | None = None

    @property
    def total_steps(self) -> int:
        """Steps of this phase (0 when nothing is learnable)."""
        learnable = self.optimizer is not None and self.config.mode != "fixed_all"
        return self.config.steps if learnable else 0

    @property
    def selected_step(self) -> int | None:
        """The step whose state the selection kept (``-1``: the initial one; ``None``: no selection)."""
        return None if self.best is None else self.best.step

    @property
    def class_losses(self) -> Tensor:
        """Mean loss of :math:`h_S` on each reference training class (computed once, when first needed)."""
        if self._class_losses is None:
            z, y = self.source
            with torch.no_grad():
                losses = F.cross_entropy(self.head(z), y, reduction="none")
            self._class_losses = B.class_mean_losses(losses, y, self.transform.num_source_classes)
        return self._class_losses

    def _start(self) -> None:
        """The initial state: (D, B) chosen by the bound if configured, cond(A), the score of step -1."""
        with self.warning_log.capture("transform step 0"):
            if self.config.label_map_init == "bound":
                scorer = self.best or BestTransform(
                    self.head, self.source, self.target, self.distance, self.config, self.seed
                )
                chosen, scores = choose_label_map(
                    self.transform,
                    self.head,
                    self.source,
                    self.target,
                    scorer.score,
                    self.config.match_label_marginal,
                )
                self.label_map_choice = {"chosen": chosen, "scores": scores}
            if self.guard.due(-1):
                self.guard.check(self.transform, -1)
            if self.best is not None:
                self.best.update(self.transform, -1)
        self.started = True

    def _follow(self) -> None:
        """Keep the data on the transform's device (Lightning moves the model after the phase is built)."""
        like = self.transform.matrix
        if self.source[0].device != like.device:
            self.source, self.target = follow(self.source, like), follow(self.target, like)
            self.target_prior = self.target_prior.to(like.device)
            self._class_losses = None

    def step(
        self, step: int, backward: Backward = _backward, optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, float] | None:
        """Run transform step ``step``.

        Args:
            step: The step within the phase (seeds the batches).
            backward: How to back-propagate the objective.
            optimizer: A wrapper of :attr:`optimizer` to step instead (Lightning's).

        Returns:
            The detached parts of the objective as floats (with ``cond_A`` where cond(A) was checked,
            ``selection_bound`` where the state was scored, ``stopped_ill_conditioned: 1.0`` where the guard
            stopped the phase), or ``None`` if the phase had stopped before this step.

        Raises:
            tta.errors.TTANumericalError: If the objective or a gradient becomes NaN or infinite.
        """
        if self.stopped_at is not None:
            return None
        self._follow()
        if not self.started:
            self._start()
        where = f"transform step {step}"
        with self.warning_log.capture(where):
            objective, parts = step_objective(
                self.transform,
                self.head,
                self.class_losses,
                self.source,
                self.target,
                self.target_prior,
                self.distance,
                self.config,
                self.seed,
                step,
            )
        opt = self.optimizer if optimizer is None else optimizer
        assert opt is not None
        opt.zero_grad(set_to_none=True)
        backward(objective)
        check_finite_gradients(self.transform, step)
        opt.step()
        record = {k: float(v) for k, v in parts.items()}
        with self.warning_log.capture(where):
            if self.guard.due(step):
                well_conditioned = self.guard.check(self.transform, step)
                record["cond_A"] = float(self.guard.last_condition or math.nan)
                if not well_conditioned:  # the last well-conditioned state is back in the transform
                    record["stopped_ill_conditioned"] = 1.0
                    self.stopped_at = step + 1
                    return record
            if self.best is not None and is_selection_step(self.config, step):
                record["selection_bound"] = self.best.update(self.transform, step)
        if self.best is not None and self.best.converged:
            self.stopped_at = step + 1  # converged: the selection bound stopped improving
        return record

    @torch.no_grad()
    def finish(self) -> None:
        """Restore the best state, refit the label-map bias, set Ā = A⁻¹ (``tta`` algorithm)."""
        self._follow()
        if self.best is not None:
            self.best.restore(self.transform)
        if self.transform.feature_map == "logit":
            self.transform.materialise_logit_map(self.head.weight, self.head.bias)
        finish_transform(self.transform, self.target_prior, self.config)
        self.finished = True

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """Everything a resumed fit needs besides the transform's parameters (plain types and tensors).

        Args:
            optimizer: Include the optimiser's state (a Lightning checkpoint holds it already).
        """
        return {
            "optimizer": self.optimizer.state_dict() if optimizer and self.optimizer is not None else None,
            "guard": self.guard.state_dict(),
            "best": None if self.best is None else self.best.state_dict(),
            "started": self.started,
            "finished": self.finished,
            "stopped_at": self.stopped_at,
            "label_map_choice": self.label_map_choice,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From :meth:`state_dict`."""
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.guard.load_state_dict(state.get("guard") or {})
        if self.best is not None and state.get("best") is not None:
            self.best.load_state_dict(state["best"])
        self.started = bool(state.get("started", False))
        self.finished = bool(state.get("finished", False))
        self.stopped_at = state.get("stopped_at")
        self.label_map_choice = state.get("label_map_choice")


def learn_transform(
    transform: TaskTransform,
    head: nn.Linear,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    distance: Any,
    config: TransformConfig | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Learn ``transform`` in a plain torch loop over :class:`TransformFitter` (what ``tta fit`` runs).

    ``transform`` must already be initialised (prior, label map).

    Args:
        transform: The transform to learn, in place.
        head: The trained reference classifier.
        source: Reference training features and labels.
        target: Target training features and labels.
        distance: A :class:`tta.distances.DistanceEstimator`.
        config: Hyper-parameters.
        seed: Seed of the batches.

    Returns:
        The detached parts of the objective at every step run, as floats; the steps where cond(A) was
        checked carry ``cond_A``, and a fit stopped by ``max_condition`` ends with a record holding
        ``stopped_ill_conditioned: 1.0`` (a :class:`~tta.errors.NumericalWarning` says so too).

    Raises:
        tta.errors.TTANumericalError: If the objective or a gradient becomes NaN or infinite.
    """
    fitter = TransformFitter(transform, head, source, target, distance, config, seed)
    history = []
    for step in range(fitter.total_steps):
        record = fitter.step(step)
        if record is None:
            break
        history.append(record)
    fitter.finish()
    return history
