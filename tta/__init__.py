"""tta: Task Transfer Analysis.

Bound, before any fine-tuning, how well a frozen pre-trained representation transfers to a
classification task, and explain why: transform a reference task (class prior, label map, affine
feature map) to look like the target and bound the target loss by

    weighted reference loss + H(Y_T | Y_S) + τ · W₁(transformed reference, target).

``import tta`` is light: heavy dependencies (Lightning, timm, GeomLoss, KeOps) load on first use.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

from tta import _moved

_moved.install()  # old module paths (tta.data.datamodule...) still import, with a DeprecationWarning

try:
    __version__ = metadata.version("task-transfer-analysis")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "TaskTransferAnalysis": "tta.modules",
    "LinearProbe": "tta.modules",
    "TaskPairDataModule": "tta.modules",
    "TaskSpec": "tta.data",
    "TaskTransform": "tta.transforms",
    "evaluate_bound": "tta.fitting",
    "TransformConfig": "tta.fitting",
    "EvalConfig": "tta.fitting",
    "HeadConfig": "tta.heads",
    "fit_linear_head": "tta.fitting",
    "Analysis": "tta.fitting",
    "AnalysisResult": "tta.results",
    "BoundReport": "tta.results",
    "analyze_features": "tta.fitting",
    "analyze": "tta.fitting",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tta' has no attribute {name!r}")
