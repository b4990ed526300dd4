"""``LinearProbe``: a gradient-penalised linear head as a LightningModule (glue over HeadTrainer)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from tta.fitting import HeadTrainer, ProbeMetrics
from tta.heads import HeadConfig, LinearHead

__all__ = ["LinearProbe", "ProbeMetrics"]


class LinearProbe(pl.LightningModule):
    """A linear classifier on frozen features, trained with the gradient penalty of DESIGN §1.1.

    With a :class:`~tta.data.TaskPairDataModule` it trains on the features of one task (``task``) and
    tests on that task's test split; its steps are :class:`~tta.fitting.HeadTrainer`'s, the same as the
    heads of :class:`~tta.modules.TaskTransferAnalysis` and :func:`~tta.fitting.fit_linear_head`.

    Args:
        feature_dim: ``d``.
        num_classes: ``K``.
        config: Training hyper-parameters (``tau``, ``w_gp``, ``steps``, ``batch_size``, ``lr``,
            ``weight_decay``).
        task: Which task of the data module to train on (``target`` or ``reference``).
        seed: Seed of the mini-batch sampling and of the random labels of the penalty.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        config: HeadConfig | None = None,
        task: Literal["target", "reference"] = "target",
        seed: int = 0,
    ):
        super().__init__()
        self.config = config or HeadConfig()
        self.task = task
        self.seed = seed
        self.head = LinearHead(feature_dim, num_classes)
        self.metrics = ProbeMetrics(num_classes)
        self.automatic_optimization = False
        self.features: Any = None
        self.head_trainer: HeadTrainer

    @property
    def total_steps(self) -> int:
        """Training steps of a fit."""
        return self.config.steps

    def forward(self, z: Tensor) -> Tensor:
        """Log-probabilities ``(n, K)`` of features ``(n, d)``."""
        return torch.log_softmax(self.head(z), dim=-1)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        name = "source" if self.task == "reference" else "target"
        return getattr(self.features, f"{name}_{split}")

    def setup(self, stage: str) -> None:
        if self.features is None:
            datamodule = self.trainer.datamodule
            self.features = datamodule.features_for(None)  # precomputed features (from_features)
            datamodule.train_steps = self.total_steps
            self.head_trainer = HeadTrainer("probe", self.head, self._split("train"), self.config, self.seed)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.head_trainer.optimizer  # owned by the HeadTrainer

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer: Any = self.optimizers()  # Lightning's wrapper: it counts the steps
        parts = self.head_trainer.step(self.global_step, self.manual_backward, optimizer)
        loss = parts.pop("loss")
        self.log_dict({f"train/probe_{k}": v for k, v in parts.items()}, on_step=True, prog_bar=False)
        self.log("train/probe_loss", loss, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        z, y = self._split("test")
        idx = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.metrics.update(self(z[idx].to(self.device)), y[idx].to(self.device))

    def on_test_epoch_end(self) -> None:
        values = self.metrics.compute()
        self.log_dict({f"test/probe_{k}": v for k, v in values.items()})
        self.metrics.reset()
