"""Datasets, task definitions, feature extraction and the feature cache.

- :mod:`tta.data.datasets`: :class:`ImageDataset` and the built-in loaders registered in
  :data:`tta.plugins.DATASETS` (``fashion_mnist``, ``mnist_5k``, ``digits``).
- :mod:`tta.data.tasks`: :class:`TaskSpec` (dataset, class subset, per-class caps, seed) and
  :func:`load_task`.
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
    dataset_splits,
    digits,
    fashion_mnist,
    mnist_5k,
    read_idx,
)
from tta.data.features import ExtractedFeatures, extract_features, get_features
from tta.data.tasks import TaskSpec, load_task, split_dataset

__all__ = [
    "CACHE_FORMAT_VERSION",
    "FASHION_MNIST_CLASSES",
    "DatasetNotFoundError",
    "ExtractedFeatures",
    "FeatureCache",
    "ImageDataset",
    "TaskPairDataModule",
    "TaskSpec",
    "dataset_splits",
    "default_cache_dir",
    "digits",
    "extract_features",
    "fashion_mnist",
    "get_features",
    "load_task",
    "mnist_5k",
    "read_idx",
    "split_dataset",
]


def __getattr__(name: str) -> Any:
    if name == "TaskPairDataModule":  # imports Lightning: only on demand
        from tta.data.datamodule import TaskPairDataModule

        return TaskPairDataModule
    raise AttributeError(f"module 'tta.data' has no attribute {name!r}")
