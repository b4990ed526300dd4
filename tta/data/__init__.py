"""Datasets, task definitions, domain shifts, feature extraction and the feature cache (no Lightning).

- Datasets: :class:`ImageDataset`, :class:`LazyImageDataset`, :class:`TextDataset`; the offline built-in
  loaders (``fashion_mnist``, ``mnist_5k``, ``digits``, ``lfw``), torchvision's classification sets by
  name (``cifar10``, ``mnist``, ``dtd``, ``imagenet`` …), ``image_folder`` and ``sms_spam``, all in
  :data:`tta.plugins.DATASETS`.
- Tasks: :class:`TaskSpec` (dataset, classes by id or name, ``random_classes``, per-class caps, label
  merging, domain shifts, seed) and :func:`load_task`; :func:`apply_shifts` (rotation, inversion,
  noise, blur, resolution).
- Features: :func:`extract_features` and :func:`get_features` (cached in a :class:`FeatureCache`:
  safetensors + JSON manifest, atomic, checksummed); :class:`FeaturePair`, the standardised features of
  a task pair that the fit engine takes (:func:`standardise`, :func:`check_features`).

Nothing here imports timm or Lightning. The Lightning classes live in :mod:`tta.modules`;
``tta.data.TaskPairDataModule`` still resolves (on first access) to
:class:`tta.modules.TaskPairDataModule`.
"""

from typing import Any

from tta.data._cache import CACHE_FORMAT_VERSION, FeatureCache, default_cache_dir
from tta.data._datasets import (
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
from tta.data._features import ExtractedFeatures, extract_features, get_features
from tta.data._pair import FeaturePair, check_features, check_split, standardise
from tta.data._shifts import apply_shifts
from tta.data._tasks import TaskSpec, load_task, resolve_classes, split_dataset

__all__ = [
    "CACHE_FORMAT_VERSION",
    "FASHION_MNIST_CLASSES",
    "DatasetNotFoundError",
    "ExtractedFeatures",
    "FeatureCache",
    "FeaturePair",
    "ImageDataset",
    "LazyImageDataset",
    "TaskPairDataModule",
    "TaskSpec",
    "TextDataset",
    "apply_shifts",
    "check_features",
    "check_split",
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
    "standardise",
]


def __getattr__(name: str) -> Any:
    if name == "TaskPairDataModule":  # imports Lightning: only on demand
        from tta.modules._datamodule import TaskPairDataModule

        return TaskPairDataModule
    raise AttributeError(f"module 'tta.data' has no attribute {name!r}")
