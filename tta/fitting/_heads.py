"""Training a gradient-penalised linear head, one optimiser step at a time. Pure torch.

:class:`HeadTrainer` owns the optimiser and the random stream of one head's training;
:func:`fit_linear_head` (the Python API) and :class:`tta.modules.TaskTransferAnalysis` (``tta fit``)
both run its :meth:`~HeadTrainer.step`, so a seed gives the same head either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tta.heads import HeadConfig, LinearHead, penalised_loss

__all__ = ["Backward", "HeadTrainer", "fit_linear_head", "follow"]

#: How a phase back-propagates its loss (``Tensor.backward`` by default; Lightning's ``manual_backward``).
Backward = Callable[[Tensor], Any]


def _backward(loss: Tensor) -> None:
    loss.backward()


def follow(split: tuple[Tensor, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    """``(features, labels)`` on the device of ``like`` (unchanged when already there).

    Phases are built before Lightning moves the model to its device; their data follows the parameters.
    """
    z, y = split
    if z.device == like.device:
        return split
    return z.to(like.device), y.to(like.device)


class HeadTrainer:
    """One linear head's training: Adam on the penalised loss of seeded mini-batches.

    Step ``i`` draws its mini-batch and the random labels of the penalty from a generator seeded by
    ``(seed, i)``, so a resumed training draws the same ones.

    Args:
        name: The phase name (``source_head``, ``probe``, ``standard_probe``).
        head: The head to train, in place.
        data: Training ``(features (n, d), labels (n,))``.
        config: Hyper-parameters (``tau``, ``w_gp``, ``steps``, ``batch_size``, ``lr``, ``weight_decay``).
        seed: Seed of the mini-batches and random labels.
    """

    def __init__(
        self, name: str, head: LinearHead, data: tuple[Tensor, Tensor], config: HeadConfig, seed: int
    ):
        config.validate(name)
        self.name = name
        self.head = head
        self.data = data
        self.config = config
        self.seed = seed
        self.optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.finished = False

    @property
    def total_steps(self) -> int:
        """Steps of this phase."""
        return self.config.steps

    def loss(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The penalised loss of step ``step``'s mini-batch (and its detached parts)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        self.data = z, y = follow(self.data, self.head.weight)
        n = z.shape[0]
        idx = torch.randperm(n, generator=generator)[: min(self.config.batch_size, n)].to(z.device)
        return penalised_loss(self.head, z[idx], y[idx], self.config.tau, self.config.w_gp, generator)

    def step(
        self, step: int, backward: Backward = _backward, optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, Tensor]:
        """Run optimiser step ``step``; returns the loss and its parts (detached).

        Args:
            step: The step within the phase (seeds the mini-batch).
            backward: How to back-propagate the loss.
            optimizer: The optimiser to step, when a wrapper of :attr:`optimizer` must be used (Lightning's
                ``LightningOptimizer``, which counts the steps); default :attr:`optimizer`.
        """
        loss, parts = self.loss(step)
        opt = self.optimizer if optimizer is None else optimizer
        opt.zero_grad()
        backward(loss)
        opt.step()
        return {"loss": loss.detach(), **parts}

    def finish(self) -> None:
        """End of the phase (nothing to do for a head)."""
        self.finished = True

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """The phase's state (the head's parameters belong to the head).

        Args:
            optimizer: Include the optimiser's state (a Lightning checkpoint holds it already).
        """
        return {"optimizer": self.optimizer.state_dict() if optimizer else None, "finished": self.finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From :meth:`state_dict`."""
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.finished = bool(state.get("finished", False))


def fit_linear_head(
    z: Tensor,
    labels: Tensor,
    num_classes: int,
    config: HeadConfig | None = None,
    seed: int = 0,
    callback: Callable[[int, dict[str, Tensor]], None] | None = None,
) -> LinearHead:
    """Train a gradient-penalised linear head on fixed features (:class:`HeadTrainer`'s steps in a loop).

    ``tta fit`` trains its heads with the same steps: the reference classifier with ``seed``, the
    τ-penalised probe with ``seed + 1`` and the standard probe with ``seed + 2`` give bit-identical heads.

    Args:
        z: Features, shape ``(n, d)``.
        labels: Class ids, shape ``(n,)``.
        num_classes: ``K``.
        config: Training hyper-parameters.
        seed: Seed for mini-batch sampling and random labels.
        callback: Called as ``callback(step, parts)`` after every step (``parts`` holds ``loss``, ``ce``,
            ``penalty`` and ``max_grad_norm``).

    Returns:
        The trained head.
    """
    config = config or HeadConfig()
    trainer = HeadTrainer("head", LinearHead(z.shape[1], num_classes).to(z), (z, labels), config, seed)
    for step in range(trainer.total_steps):
        parts = trainer.step(step)
        if callback is not None:
            callback(step, parts)
    trainer.finish()
    return trainer.head
