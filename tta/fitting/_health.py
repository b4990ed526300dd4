"""Numerical health of a fit: the cond(A) guard, non-finite gradients, and the run's warning log. Pure torch.

Used by :class:`tta.fitting.TransformFitter`:

- :class:`ConditionGuard` checks cond(A) every ``select_every`` transform steps and stops the phase (with a
  :class:`~tta.errors.NumericalWarning`, keeping the last well-conditioned state) when it exceeds
  ``transform.max_condition``;
- :func:`check_finite_gradients` raises :class:`~tta.errors.TTANumericalError` before an optimiser step on
  a NaN/Inf gradient would silently ruin the transform;
- :class:`WarningLog` collects the numerical warnings (and solvers' non-convergence) of a run, once each,
  for the ``warnings`` list of its result record.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tta.errors import NumericalWarning, TTANumericalError
from tta.transforms import TaskTransform, condition_number

if TYPE_CHECKING:
    from tta.fitting._config import TransformConfig

__all__ = ["ConditionGuard", "WarningLog", "check_finite_gradients"]


def check_finite_gradients(transform: TaskTransform, step: int) -> None:
    """Raise if a gradient of the transform's parameters is NaN or infinite (call after ``backward``).

    An Adam step on such a gradient would silently turn the parameters into NaN.

    Args:
        transform: The transform whose ``.grad`` fields are checked.
        step: The transform step (for the message).

    Raises:
        tta.errors.TTANumericalError: Naming the parameters and the fixes.
    """
    bad = [
        name
        for name, p in transform.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    if bad:
        raise TTANumericalError(
            f"non-finite gradient of {', '.join(bad)} at transform step {step} (phase 'transform'). Fix: "
            "lower transform.lr_feature_map and transform.lr, lower transform.max_condition, or check the "
            "features for NaN/Inf"
        )


class ConditionGuard:
    """Stops the transform phase when cond(A) exceeds ``config.max_condition`` (see :class:`TransformConfig`).

    Every check of a well-conditioned A keeps a copy of the transform's state; the first check above the
    threshold warns with :class:`~tta.errors.NumericalWarning`, loads the last well-conditioned state back
    and marks the phase as stopped.

    Args:
        config: The transform configuration (``max_condition``, ``select_every``, ``steps``).

    Attributes:
        stopped_at: The transform step whose A was ill-conditioned (``None`` while running).
        cond_at_stop: cond(A) at that step.
        last_condition: cond(A) at the latest check.
    """

    #: Check cadence when best-state selection is off (``select_every == 0``).
    DEFAULT_EVERY = 25

    #: The attributes a checkpoint keeps, so that a resumed fit checks and restores alike.
    STATE_KEYS = ("state", "good_step", "last_condition", "stopped_at", "cond_at_stop")

    def __init__(self, config: TransformConfig):
        self.max_condition = config.max_condition
        self.every = config.select_every if config.select_every > 0 else self.DEFAULT_EVERY
        self.steps = config.steps
        self.stopped_at: int | None = None
        self.cond_at_stop: float | None = None
        self.last_condition: float | None = None
        self.good_step = -1
        self.state: dict[str, Tensor] | None = None

    @property
    def enabled(self) -> bool:
        """Whether a threshold is set."""
        return self.max_condition is not None and math.isfinite(self.max_condition)

    def due(self, step: int) -> bool:
        """Whether cond(A) is checked after transform step ``step`` (0-based; ``-1``: the initial state)."""
        return self.enabled and (step < 0 or (step + 1) % self.every == 0 or step + 1 == self.steps)

    def check(self, transform: TaskTransform, step: int) -> bool:
        """Check cond(A) after step ``step``; ``False`` (after warning and restoring) if it is too large."""
        kappa = condition_number(transform.matrix)
        self.last_condition = kappa
        if self.max_condition is None or kappa <= self.max_condition:
            self.good_step = step
            self.state = {k: v.detach().clone() for k, v in transform.state_dict().items()}
            return True
        self.stopped_at, self.cond_at_stop = step, kappa
        kept = "the initial state" if self.good_step < 0 else f"the state after step {self.good_step}"
        warnings.warn(
            f"cond(A) = {kappa:.3g} exceeds transform.max_condition = {self.max_condition:.3g} after "
            f"transform step {step}: the feature map is close to singular, so A^-1 (and tau) are unreliable. "
            f"The transform phase stopped early and kept {kept}. Lower transform.lr_feature_map to keep A "
            "well-conditioned, or raise transform.max_condition.",
            NumericalWarning,
            stacklevel=2,
        )
        if self.state is not None:
            transform.load_state_dict(self.state)
        return False

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the last well-conditioned state, where the guard stopped and cond(A) then."""
        return {k: getattr(self, k) for k in self.STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From checkpoints (keys other than :attr:`STATE_KEYS` are ignored)."""
        for k in self.STATE_KEYS:
            if k in state:
                setattr(self, k, state[k])

    def record(self) -> dict[str, Any]:
        """What the result records: ``stopped_ill_conditioned_at`` (``None`` if not stopped) and cond(A)."""
        return {
            "stopped_ill_conditioned_at": self.stopped_at,
            "cond_A_at_stop": self.cond_at_stop,
            "max_condition": self.max_condition,
        }


class WarningLog:
    """Collects the numerical warnings of a run, deduplicated, for the ``warnings`` list of its result.

    :meth:`capture` records every :class:`~tta.errors.NumericalWarning` raised in its block (and re-emits
    every warning caught, through the filters in force outside, so that users still see them once), and a
    distance estimator's ``converged: False`` diagnostic when the block raised no numerical warning
    about it.
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self._registry: dict[Any, Any] = {}

    def add(self, message: str, where: str) -> None:
        """Record ``message`` (seen at ``where``, e.g. ``transform step 12``)."""
        entry = self.entries.setdefault(message, {"count": 0, "first": where})
        entry["count"] += 1

    @contextlib.contextmanager
    def capture(self, where: str) -> Iterator[None]:
        """Record the numerical warnings raised in the block.

        A distance whose solver did not converge says so by a :class:`~tta.errors.NumericalWarning`
        (the driver :func:`tta.distances.wasserstein_1` warns for every estimator), so it lands here.

        Args:
            where: Where the block runs (for the record).
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, NumericalWarning):
                self.add(str(w.message), where)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=self._registry)

    def messages(self) -> list[str]:
        """One string per distinct message: ``message [×count, first at where]``."""
        out = []
        for message, e in self.entries.items():
            times = f"×{e['count']}, " if e["count"] > 1 else ""
            out.append(f"{message} [{times}first at {e['first']}]")
        return out

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints (plain types)."""
        return {"entries": copy.deepcopy(self.entries)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From checkpoints."""
        self.entries = copy.deepcopy(state.get("entries", {}))
