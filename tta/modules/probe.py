"""``LinearProbe``: a gradient-penalised linear head as a LightningModule (glue only; maths in tta.heads)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import Tensor

from tta.heads import HeadConfig, LinearHead, penalised_loss

__all__ = ["LinearProbe", "ProbeMetrics"]


class ProbeMetrics(torch.nn.Module):
    """Test metrics of a classifier given log-probabilities: accuracy, cross-entropy, calibration error.

    Cross-entropy is a torchmetrics ``MeanMetric``, so it aggregates correctly over batches and ranks.

    Args:
        num_classes: Number of classes.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.ce = torchmetrics.MeanMetric()
        self.ece = torchmetrics.classification.MulticlassCalibrationError(num_classes=num_classes, n_bins=15)

    def update(self, log_probs: Tensor, labels: Tensor) -> None:
        """Add a batch of log-probabilities ``(n, K)`` and labels ``(n,)``."""
        self.acc.update(log_probs, labels)
        self.ce.update(-log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1))
        self.ece.update(log_probs.exp(), labels)

    def compute(self) -> dict[str, float]:
        """``{"ce", "acc", "ece"}`` as floats."""
        return {
            "ce": float(self.ce.compute()),
            "acc": float(self.acc.compute()),
            "ece": float(self.ece.compute()),
        }

    def reset(self) -> None:
        """Clear the state."""
        for m in (self.acc, self.ce, self.ece):
            m.reset()


class LinearProbe(pl.LightningModule):
    """A linear classifier on frozen features, trained with the gradient penalty of DESIGN §1.1.

    Used inside :class:`~tta.modules.TaskTransferAnalysis` as the reference classifier and the target
    probes, and on its own: with a :class:`~tta.data.TaskPairDataModule` it trains on the cached features
    of one task (``task``) and tests on that task's test split.

    Args:
        feature_dim: ``d``.
        num_classes: ``K``.
        config: Training hyper-parameters (``tau``, ``w_gp``, ``steps``, ``batch_size``, ``lr``,
            ``weight_decay``).
        task: Which task of the data module to train on when used standalone (``target`` or ``reference``).
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

    @property
    def total_steps(self) -> int:
        """Training steps of a standalone fit (the data module sizes its loader by it)."""
        return self.config.steps

    def forward(self, z: Tensor) -> Tensor:
        """Log-probabilities ``(n, K)`` of features ``(n, d)``."""
        return torch.log_softmax(self.head(z), dim=-1)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the head's parameters, as configured."""
        return torch.optim.Adam(
            self.head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    def loss_on_batch(self, z: Tensor, labels: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Penalised loss on a random mini-batch of ``(z, labels)``, reproducible from ``(seed, step)``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        n = z.shape[0]
        idx = torch.randperm(n, generator=generator)[: min(self.config.batch_size, n)].to(z.device)
        return penalised_loss(self.head, z[idx], labels[idx], self.config.tau, self.config.w_gp, generator)

    # ---------------------------------------------------------------- standalone use
    def _task_features(self, split: str) -> tuple[Tensor, Tensor]:
        features = self.trainer.datamodule.features  # type: ignore[union-attr]
        name = "source" if self.task == "reference" else "target"
        return getattr(features, f"{name}_{split}")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        z, y = self._task_features("train")
        loss, parts = self.loss_on_batch(z.to(self.device), y.to(self.device), self.global_step)
        opt = self.optimizers()
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        self.log_dict({f"train/probe_{k}": v for k, v in parts.items()}, on_step=True, prog_bar=False)
        self.log("train/probe_loss", loss.detach(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        z, y = self._task_features("test")
        idx = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.metrics.update(self(z[idx].to(self.device)), y[idx].to(self.device))

    def on_test_epoch_end(self) -> None:
        values = self.metrics.compute()
        self.log_dict({f"test/probe_{k}": v for k, v in values.items()})
        self.metrics.reset()
