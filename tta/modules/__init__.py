"""LightningModules: glue around the maths of tta.bound, tta.heads, tta.fitting and tta.distances."""

from tta.modules.analysis import TaskTransferAnalysis
from tta.modules.backbone_training import SmallCNNClassifier, TaskImageDataModule
from tta.modules.interrupt import InterruptCallback
from tta.modules.probe import LinearProbe, ProbeMetrics

__all__ = [
    "InterruptCallback",
    "LinearProbe",
    "ProbeMetrics",
    "SmallCNNClassifier",
    "TaskImageDataModule",
    "TaskTransferAnalysis",
]
