"""Datasets, task definitions, feature extraction and the feature cache.

- :mod:`tta.data.datasets`: :class:`ImageDataset`, :class:`LazyImageDataset`, :class:`TextDataset` and
  the offline built-in loaders registered in :data:`tta.plugins.DATASETS` (``fashion_mnist``,
  ``mnist_5k``, ``digits``, ``lfw``).
- :mod:`tta.data.torchvision_sets`: torchvision's classification sets by name (``cifar10``, ``mnist``,
  ``dtd``, ``imagenet`` …) and ``image_folder``; :mod:`tta.data.text`: ``sms_spam``.
- :mod:`tta.data.tasks`: :class:`TaskSpec` (dataset, classes by id or name, ``random_classes``, per-class
  caps, label merging, domain shifts, seed) and :func:`load_task`.
- :mod:`tta.data.shifts`: the domain shifts (rotation, inversion, noise, blur, resolution).
- :mod:`tta.data.features`: :func:`extract_features` and :func:`get_features` (cached).
- :mod:`tta.data.cache`: :class:`FeatureCache` (safetensors + JSON manifest, atomic, checksummed).

Nothing here imports timm or Lightning; :class:`TaskPairDataModule` (Lightning) loads on first access.
"""

from typing import Any

from tta.data.cache import CACHE_FORMAT_VERSION, FeatureCache, default_cache_dir
from tta.data.datasets import (
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    ImageDataset,
    LazyImageDataset,
    TextDataset,
    dataset_splits,
    digits,
    fashion_mnist,
    lfw,
    mnist_5k,
    read_idx,
)
from tta.data.features import ExtractedFeatures, extract_features, get_features
from tta.data.shifts import apply_shifts
from tta.data.tasks import TaskSpec, load_task, resolve_classes, split_dataset

__all__ = [
    "CACHE_FORMAT_VERSION",
    "FASHION_MNIST_CLASSES",
    "DatasetNotFoundError",
    "ExtractedFeatures",
    "FeatureCache",
    "ImageDataset",
    "LazyImageDataset",
    "TaskPairDataModule",
    "TaskSpec",
    "TextDataset",
    "apply_shifts",
    "dataset_splits",
    "default_cache_dir",
    "digits",
    "extract_features",
    "fashion_mnist",
    "get_features",
    "lfw",
    "load_task",
    "mnist_5k",
    "read_idx",
    "resolve_classes",
    "split_dataset",
]


def __getattr__(name: str) -> Any:
    if name == "TaskPairDataModule":  # imports Lightning: only on demand
        from tta.data.datamodule import TaskPairDataModule

        return TaskPairDataModule
    raise AttributeError(f"module 'tta.data' has no attribute {name!r}")
