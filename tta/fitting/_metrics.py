"""Test metrics of a classifier from its log-probabilities (torchmetrics: batch- and rank-correct)."""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

__all__ = ["ProbeMetrics"]


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
