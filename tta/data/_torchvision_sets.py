"""torchvision's classification datasets by registry name, and ``image_folder`` for any ImageFolder tree.

Every loader uses torchvision's own dataset class, so its own file layout, integrity checks and download
code (``download=True``; needs network). Files are looked for under ``root`` (default
``$TTA_DATA_DIR``, else ``~/.cache/tta/datasets``); when they are missing and ``download`` is false the
loader raises :class:`~tta.data.DatasetNotFoundError` naming the root it searched.

Fixed-size sets (CIFAR-10/100, MNIST, KMNIST, USPS, SVHN) are read into an
:class:`~tta.data.ImageDataset`. Sets of variable-size photographs (DTD, Oxford-IIIT Pet,
FGVC-Aircraft, Flowers-102, Food-101, Stanford Cars, Caltech-101, ImageNet, ``image_folder``) return a
:class:`~tta.data.LazyImageDataset`: nothing is decoded until a task has selected its samples,
then each kept image is resized (shorter side to ``image_size``, default 256) and center-cropped to
``image_size × image_size`` RGB.

Where torchvision has a validation split besides train and test (DTD, Flowers-102, FGVC-Aircraft,
Oxford-IIIT Pet's ``trainval``), ``split="train"`` is train + validation, the usual linear-probe protocol;
``split="val"`` gives the validation split alone. ImageNet's ``"test"`` is its public validation set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tta.data._datasets import (
    DatasetNotFoundError,
    ImageDataset,
    LazyImageDataset,
    _official_splits,
)
from tta.errors import TTAInputError
from tta.plugins import DATASETS

__all__ = [
    "TORCHVISION_DATASETS",
    "caltech101",
    "cifar10",
    "cifar100",
    "default_data_root",
    "dtd",
    "fgvc_aircraft",
    "flowers102",
    "food101",
    "image_folder",
    "imagenet",
    "kmnist",
    "mnist",
    "oxford_iiit_pet",
    "stanford_cars",
    "svhn",
    "usps",
]

#: Registry name -> torchvision class name, for the loaders of this module.
TORCHVISION_DATASETS = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "kmnist": "KMNIST",
    "usps": "USPS",
    "svhn": "SVHN",
    "dtd": "DTD",
    "oxford_iiit_pet": "OxfordIIITPet",
    "fgvc_aircraft": "FGVCAircraft",
    "flowers102": "Flowers102",
    "food101": "Food101",
    "stanford_cars": "StanfordCars",
    "caltech101": "Caltech101",
    "imagenet": "ImageNet",
}
_DIGITS = [str(i) for i in range(10)]
#: Datasets whose files torchvision cannot download: how to get them.
_MANUAL = {
    "imagenet": (
        "ImageNet cannot be downloaded automatically: get ILSVRC2012_devkit_t12.tar.gz, "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org and put them in "
        "`root` (torchvision unpacks them on first use)"
    ),
    "stanford_cars": (
        "Stanford Cars cannot be downloaded by torchvision any more (the original URL is gone): put the "
        "`stanford_cars/` folder (devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat) in `root`"
    ),
}


def default_data_root() -> Path:
    """Default root of torchvision datasets: ``$TTA_DATA_DIR``, else ``~/.cache/tta/datasets``."""
    env = os.environ.get("TTA_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tta" / "datasets"


def _root(root: str | os.PathLike[str] | None) -> str:
    return str(Path(root).expanduser() if root is not None else default_data_root())


def _open(name: str, factory: Callable[[], Any], root: str, download: bool) -> Any:
    """Build a torchvision dataset; missing or corrupt files become a :class:`DatasetNotFoundError`."""
    if download and name in _MANUAL:
        raise DatasetNotFoundError(f"{name}: {_MANUAL[name]}; then set `dataset_kwargs: {{root: <dir>}}`.")
    try:
        return factory()
    except (RuntimeError, OSError, ValueError) as err:
        how = (
            _MANUAL[name]
            if name in _MANUAL
            else (
                "set `dataset_kwargs: {root: <dir>, download: true}` to let torchvision download them into "
                "<dir> (needs network), or point `root` at an existing copy"
            )
        )
        state = "the download did not produce usable files" if download else "download is off"
        raise DatasetNotFoundError(
            f"{name} ({TORCHVISION_DATASETS.get(name, 'ImageFolder')}) not found: searched root {root!r} "
            f"and {state} (torchvision: {err}). To fix: {how}."
        ) from err


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise TTAInputError(f"{name}: split must be one of {', '.join(map(repr, allowed))}, got {split!r}")


def _tv():
    import torchvision.datasets as tvd

    return tvd


def _labels_of(ds: Any) -> list[int]:
    """Every label of a torchvision dataset without decoding an image."""
    for attr in ("_labels", "targets", "y", "labels"):
        if hasattr(ds, attr):
            return [int(v) for v in getattr(ds, attr)]
    for attr in ("_samples", "samples"):
        if hasattr(ds, attr):
            return [int(t) for _, t in getattr(ds, attr)]
    raise TypeError(f"cannot read the labels of {type(ds).__name__}")  # pragma: no cover


class _Concat:
    """Index into several torchvision datasets in turn (train + val), without decoding anything."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Any:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][i - int(self.offsets[k])]


def _lazy(
    name: str, parts: Sequence[Any], class_names: Sequence[str], split: str | None, image_size: int
) -> LazyImageDataset:
    for p in parts[1:]:
        if list(getattr(p, "classes", class_names)) != list(getattr(parts[0], "classes", class_names)):
            raise TTAInputError(f"{name}: the {split} split's parts have different classes; check the files")
    labels = [y for p in parts for y in _labels_of(p)]
    source = parts[0] if len(parts) == 1 else _Concat(parts)
    return LazyImageDataset(
        name=name,
        source=source,
        indices=torch.arange(len(labels)),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=[str(c) for c in class_names],
        split=split,
        image_size=image_size,
    )


# ------------------------------------------------------------------------------------ fixed-size sets


def _cifar(name: str, cls: str, split: str, root: str | None, download: bool) -> ImageDataset:
    _check_split(name, split, ("train", "test"))
    r = _root(root)
    tv = _open(name, lambda: getattr(_tv(), cls)(r, train=split == "train", download=download), r, download)
    images = torch.from_numpy(np.ascontiguousarray(tv.data, dtype=np.uint8))
    return ImageDataset(name, images, torch.tensor(tv.targets, dtype=torch.int64), list(tv.classes), split)


@DATASETS.register("cifar10")
@_official_splits("train", "test")
def cifar10(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-10: 32×32 RGB images, 10 classes, train/test 50 000/10 000 (``torchvision.datasets.CIFAR10``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``cifar-10-batches-py/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 32, 32, 3)`` uint8.
    """
    return _cifar("cifar10", "CIFAR10", split, root, download)


@DATASETS.register("cifar100")
@_official_splits("train", "test")
def cifar100(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-100: 32×32 RGB images, 100 fine classes, train/test 50 000/10 000 (``CIFAR100``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``cifar-100-python/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 32, 32, 3)`` uint8.
    """
    return _cifar("cifar100", "CIFAR100", split, root, download)


def _mnist_like(name: str, cls: str, split: str, root: str | None, download: bool) -> ImageDataset:
    _check_split(name, split, ("train", "test"))
    r = _root(root)
    tv = _open(name, lambda: getattr(_tv(), cls)(r, train=split == "train", download=download), r, download)
    return ImageDataset(name, tv.data.to(torch.uint8), tv.targets.to(torch.int64), list(tv.classes), split)


@DATASETS.register("mnist")
@_official_splits("train", "test")
def mnist(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """MNIST: 28×28 grayscale digits, train/test 60 000/10 000 (``torchvision.datasets.MNIST``).

    Class names are torchvision's (``"0 - zero"`` … ``"9 - nine"``). For 5 000 real MNIST digits that
    need no download, see ``mnist_5k``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``MNIST/raw/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 28, 28)`` uint8.
    """
    return _mnist_like("mnist", "MNIST", split, root, download)


@DATASETS.register("kmnist")
@_official_splits("train", "test")
def kmnist(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """Kuzushiji-MNIST: 28×28 grayscale cursive Japanese characters, 10 classes, 60 000/10 000 (``KMNIST``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``KMNIST/raw/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 28, 28)`` uint8.
    """
    return _mnist_like("kmnist", "KMNIST", split, root, download)


@DATASETS.register("usps")
@_official_splits("train", "test")
def usps(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """USPS: 16×16 grayscale digits, train/test 7 291/2 007 (``torchvision.datasets.USPS``).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``usps.bz2`` and ``usps.t.bz2``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 16, 16)`` uint8 (torchvision's scaling of [-1, 1] to 0..255).
    """
    _check_split("usps", split, ("train", "test"))
    r = _root(root)
    tv = _open("usps", lambda: _tv().USPS(r, train=split == "train", download=download), r, download)
    images = torch.from_numpy(np.ascontiguousarray(tv.data, dtype=np.uint8))
    return ImageDataset("usps", images, torch.tensor(tv.targets, dtype=torch.int64), list(_DIGITS), split)


@DATASETS.register("svhn")
@_official_splits("train", "test")
def svhn(split: str = "train", root: str | None = None, download: bool = False) -> ImageDataset:
    """SVHN: 32×32 RGB house-number digits, train/test/extra 73 257/26 032/531 131 (``SVHN``).

    torchvision's labels (digit ``0`` is label 0); class names ``"0"`` … ``"9"``.

    Args:
        split: ``"train"``, ``"test"`` or ``"extra"``.
        root: torchvision root (holds ``train_32x32.mat`` …); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).

    Returns:
        The split, images ``(N, 32, 32, 3)`` uint8.
    """
    _check_split("svhn", split, ("train", "test", "extra"))
    r = _root(root)
    tv = _open("svhn", lambda: _tv().SVHN(r, split=split, download=download), r, download)
    images = torch.from_numpy(np.ascontiguousarray(np.transpose(tv.data, (0, 2, 3, 1)), dtype=np.uint8))
    return ImageDataset(
        "svhn", images, torch.from_numpy(np.asarray(tv.labels, dtype=np.int64)), _DIGITS, split
    )


# ------------------------------------------------------------------------------- variable-size photos


@DATASETS.register("dtd")
@_official_splits("train", "test")
def dtd(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int = 256,
    partition: int = 1,
) -> LazyImageDataset:
    """Describable Textures: 5 640 photos, 47 classes, 40 per class per split (``torchvision.datasets.DTD``).

    Args:
        split: ``"train"`` (train + val, 3 760), ``"val"`` or ``"test"`` (1 880).
        root: torchvision root (holds ``dtd/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.
        partition: Which of DTD's 10 official partitions (1..10).

    Returns:
        The split, decoded on demand.
    """
    _check_split("dtd", split, ("train", "val", "test"))
    r = _root(root)
    parts = ("train", "val") if split == "train" else (split,)
    tvs = [
        _open("dtd", lambda s=s: _tv().DTD(r, split=s, partition=partition, download=download), r, download)
        for s in parts
    ]
    return _lazy("dtd", tvs, tvs[0].classes, split, image_size)


@DATASETS.register("oxford_iiit_pet")
@_official_splits("train", "test")
def oxford_iiit_pet(
    split: str = "train", root: str | None = None, download: bool = False, image_size: int = 256
) -> LazyImageDataset:
    """Oxford-IIIT Pet: 37 cat and dog breeds, trainval/test 3 680/3 669 (``OxfordIIITPet``).

    Args:
        split: ``"train"`` (torchvision's ``"trainval"``) or ``"test"``.
        root: torchvision root (holds ``oxford-iiit-pet/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.

    Returns:
        The split, decoded on demand.
    """
    _check_split("oxford_iiit_pet", split, ("train", "test"))
    r = _root(root)
    tv_split = "trainval" if split == "train" else "test"
    tv = _open(
        "oxford_iiit_pet", lambda: _tv().OxfordIIITPet(r, split=tv_split, download=download), r, download
    )
    return _lazy("oxford_iiit_pet", [tv], tv.classes, split, image_size)


@DATASETS.register("fgvc_aircraft")
@_official_splits("train", "test")
def fgvc_aircraft(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int = 256,
    annotation_level: str = "variant",
) -> LazyImageDataset:
    """FGVC-Aircraft: 10 000 aircraft photos, 100 variants (or 70 families, 30 makers) (``FGVCAircraft``).

    Args:
        split: ``"train"`` (torchvision's ``"trainval"``, 6 667), ``"val"`` or ``"test"`` (3 333).
        root: torchvision root (holds ``fgvc-aircraft-2013b/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.
        annotation_level: ``"variant"``, ``"family"`` or ``"manufacturer"``.

    Returns:
        The split, decoded on demand.
    """
    _check_split("fgvc_aircraft", split, ("train", "val", "test"))
    r = _root(root)
    tv_split = "trainval" if split == "train" else split
    tv = _open(
        "fgvc_aircraft",
        lambda: _tv().FGVCAircraft(r, split=tv_split, annotation_level=annotation_level, download=download),
        r,
        download,
    )
    return _lazy("fgvc_aircraft", [tv], tv.classes, split, image_size)


@DATASETS.register("flowers102")
@_official_splits("train", "test")
def flowers102(
    split: str = "train", root: str | None = None, download: bool = False, image_size: int = 256
) -> LazyImageDataset:
    """Oxford Flowers-102: 102 flower species, train/val/test 1 020/1 020/6 149 (``Flowers102``).

    Args:
        split: ``"train"`` (train + val, 2 040), ``"val"`` or ``"test"``.
        root: torchvision root (holds ``flowers-102/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.

    Returns:
        The split, decoded on demand.
    """
    _check_split("flowers102", split, ("train", "val", "test"))
    r = _root(root)
    parts = ("train", "val") if split == "train" else (split,)
    tvs = [
        _open("flowers102", lambda s=s: _tv().Flowers102(r, split=s, download=download), r, download)
        for s in parts
    ]
    return _lazy("flowers102", tvs, tvs[0].classes, split, image_size)


@DATASETS.register("food101")
@_official_splits("train", "test")
def food101(
    split: str = "train", root: str | None = None, download: bool = False, image_size: int = 256
) -> LazyImageDataset:
    """Food-101: 101 dishes, train/test 75 750/25 250 (``torchvision.datasets.Food101``; a 5 GB download).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``food-101/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.

    Returns:
        The split, decoded on demand.
    """
    _check_split("food101", split, ("train", "test"))
    r = _root(root)
    tv = _open("food101", lambda: _tv().Food101(r, split=split, download=download), r, download)
    return _lazy("food101", [tv], tv.classes, split, image_size)


@DATASETS.register("stanford_cars")
@_official_splits("train", "test")
def stanford_cars(
    split: str = "train", root: str | None = None, download: bool = False, image_size: int = 256
) -> LazyImageDataset:
    """Stanford Cars: 196 car models, train/test 8 144/8 041 (``StanfordCars``; files fetched by hand).

    Args:
        split: ``"train"`` or ``"test"``.
        root: torchvision root (holds ``stanford_cars/``); default :func:`default_data_root`.
        download: Not possible (torchvision's source URL is gone); raises with instructions.
        image_size: Side of the decoded square images.

    Returns:
        The split, decoded on demand.
    """
    _check_split("stanford_cars", split, ("train", "test"))
    r = _root(root)
    tv = _open("stanford_cars", lambda: _tv().StanfordCars(r, split=split, download=False), r, download)
    return _lazy("stanford_cars", [tv], tv.classes, split, image_size)


@DATASETS.register("caltech101")
def caltech101(root: str | None = None, download: bool = False, image_size: int = 256) -> LazyImageDataset:
    """Caltech-101: 8 677 photos of 101 object categories (``Caltech101``); no official split.

    :func:`tta.data.load_task` splits it (stratified, seeded, ``test_fraction``).

    Args:
        root: torchvision root (holds ``caltech101/``); default :func:`default_data_root`.
        download: Let torchvision download the files into ``root`` (needs network).
        image_size: Side of the decoded square images.

    Returns:
        The whole dataset, decoded on demand, ``split=None``.
    """
    r = _root(root)
    tv = _open("caltech101", lambda: _tv().Caltech101(r, download=download), r, download)
    return _lazy("caltech101", [tv], tv.categories, None, image_size)


@DATASETS.register("imagenet")
@_official_splits("train", "test")
def imagenet(
    split: str = "train", root: str | None = None, download: bool = False, image_size: int = 256
) -> LazyImageDataset:
    """ImageNet-1k (ILSVRC 2012): 1 000 classes, train/val 1 281 167/50 000 (``ImageNet``).

    The archives must be obtained from image-net.org (no automatic download). Class names are the first
    WordNet synonym of each class (``"tench"``, ``"goldfish"`` …); a name shared by two classes gets the
    WordNet id appended (``"crane (n02012849)"``).

    Args:
        split: ``"train"`` or ``"test"`` (the public validation set).
        root: torchvision root holding the archives or the unpacked ``train/``, ``val/`` and ``meta.bin``.
        download: Not possible; raises with instructions.
        image_size: Side of the decoded square images.

    Returns:
        The split, decoded on demand.
    """
    _check_split("imagenet", split, ("train", "test"))
    r = _root(root)
    tv_split = "train" if split == "train" else "val"
    tv = _open("imagenet", lambda: _tv().ImageNet(r, split=tv_split), r, download)
    first = [names[0] if isinstance(names, tuple) else str(names) for names in tv.classes]
    counts = {n: first.count(n) for n in first}
    unique = [n if counts[n] == 1 else f"{n} ({wnid})" for n, wnid in zip(first, tv.wnids, strict=True)]
    return _lazy("imagenet", [tv], unique, split, image_size)


# ------------------------------------------------------------------------------------------ ImageFolder


def _folder(name: str, root: str) -> Any:
    from torchvision.datasets import ImageFolder

    if not Path(root).is_dir():
        raise DatasetNotFoundError(
            f"{name}: no directory {root!r}. Give the root of an ImageFolder tree (<root>/<class>/<image>) "
            "in `dataset_kwargs: {root: <dir>}`."
        )
    try:
        return ImageFolder(root)
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetNotFoundError(
            f"{name}: {root!r} is not an ImageFolder tree ({err}); expected <root>/<class name>/<image file>."
        ) from err


def _image_folder_splits(**kwargs: Any) -> tuple[str, ...] | None:
    return ("train", "test") if kwargs.get("train_root") or kwargs.get("test_root") else None


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    split: str | None = None,
    train_root: str | None = None,
    test_root: str | None = None,
    image_size: int = 256,
) -> LazyImageDataset:
    """Any ImageFolder tree (``<root>/<class name>/<image>``, torchvision's ``ImageFolder``).

    Classes are the sub-folder names in sorted order. Either one tree (``root``: no official split;
    :func:`tta.data.load_task` splits it, stratified and seeded) or two with the same class folders
    (``train_root`` and ``test_root``: an official train/test split).

    Args:
        root: The tree of the whole dataset.
        split: ``"train"`` or ``"test"`` with ``train_root``/``test_root``; ``None`` with ``root``.
        train_root: The tree of the training split.
        test_root: The tree of the test split.
        image_size: Side of the decoded square images (shorter side resized, then center-cropped).

    Returns:
        The dataset or split, decoded on demand.
    """
    if train_root or test_root:
        if not (train_root and test_root) or root is not None:
            raise TTAInputError("image_folder: give either `root`, or both `train_root` and `test_root`")
        if split not in ("train", "test"):
            raise TTAInputError(
                f"image_folder: split must be 'train' or 'test' with train_root/test_root, got {split!r}"
            )
        trees = {
            s: _folder("image_folder", str(Path(p).expanduser()))
            for s, p in (("train", train_root), ("test", test_root))
        }
        if trees["train"].classes != trees["test"].classes:
            raise TTAInputError(
                f"image_folder: the train and test trees have different class folders: "
                f"{trees['train'].classes} vs {trees['test'].classes}"
            )
        tree = trees[split]
    else:
        if root is None:
            raise DatasetNotFoundError(
                "image_folder: no tree given; set `dataset_kwargs: {root: <dir>}` "
                "(or train_root and test_root)"
            )
        if split is not None:
            raise TTAInputError("image_folder: a single `root` has no official split; leave `split` unset")
        tree = _folder("image_folder", str(Path(root).expanduser()))
    paths = [p for p, _ in tree.samples]
    return LazyImageDataset(
        name="image_folder",
        source=paths,
        indices=torch.arange(len(paths)),
        labels=torch.tensor(tree.targets, dtype=torch.int64),
        class_names=list(tree.classes),
        split=split,
        image_size=image_size,
    )


image_folder.splits_for = _image_folder_splits  # type: ignore[attr-defined]
