"""An example tta plugin: one backbone, one dataset and one distance estimator.

Entry points (see ``pyproject.toml``):

- ``tta.backbones``: ``torchvision`` → :class:`TorchvisionBackbone`, a provider: ``torchvision/resnet18``,
  ``torchvision/mobilenet_v3_small``... (any torchvision classification model, penultimate features).
- ``tta.datasets``: ``npy_folder`` → :func:`npy_folder`, images read from ``root/<class>/*.npy``.
- ``tta.distances``: ``sliced_wasserstein`` → :class:`SlicedWassersteinDistance`, Monte-Carlo sliced W₁.

Importing this package imports nothing heavy: each object loads its module on first access, so that
tta loading one plugin object does not import the others' dependencies.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

try:
    __version__ = metadata.version("tta-example-plugin")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "TorchvisionBackbone": "tta_example_plugin.backbone",
    "preprocess_for_weights": "tta_example_plugin.backbone",
    "npy_folder": "tta_example_plugin.dataset",
    "SlicedWassersteinDistance": "tta_example_plugin.distance",
    "sliced_wasserstein": "tta_example_plugin.distance",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tta_example_plugin' has no attribute {name!r}")
