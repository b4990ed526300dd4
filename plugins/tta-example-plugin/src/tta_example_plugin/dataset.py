"""A labelled image dataset read from a folder of NumPy files, one sub-folder per class.

::

    root/
        cat/  0001.npy  0002.npy  ...
        dog/  0001.npy  ...

Each file holds one image, an array ``(H, W)`` (grayscale) or ``(H, W, C)`` with C in {1, 3, 4}
(uint8, or any integer type with values in 0..255), all of one shape. It is the ``ImageFolder``
layout for images that are already arrays (renders, medical slices, preprocessed crops...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tta.data import DatasetNotFoundError, ImageDataset
from tta.errors import TTAInputError

__all__ = ["npy_folder"]


def _read_image(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise TTAInputError(f"npy_folder: cannot read {path} as a .npy array: {err}") from err
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise TTAInputError(
            f"npy_folder: {path} holds an array of shape {arr.shape}; expected one image (H, W) or "
            "(H, W, C) with C in {1, 3, 4}"
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TTAInputError(
                f"npy_folder: {path} has dtype {arr.dtype}; expected uint8 pixels (0..255). Convert it, e.g. "
                "np.save(path, np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)) for [0, 1] floats"
            )
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise TTAInputError(f"npy_folder: {path} has values {lo}..{hi}, outside the uint8 range 0..255")
        arr = arr.astype(np.uint8)
    return arr


def npy_folder(root: str, classes: list[str] | None = None, name: str | None = None) -> ImageDataset:
    """Read ``root/<class>/*.npy`` into an :class:`~tta.data.ImageDataset` (no official split).

    Classes are the sub-folders of ``root`` in sorted order (label ``i`` is the ``i``-th), or
    ``classes`` in the given order; files are read in sorted order. There is no official train/test
    split: :func:`tta.data.load_task` holds out ``test_fraction`` of each class (stratified, seeded).
    The feature cache keys on ``root``, not on the files: after changing them, run with
    ``--data.use_cache false`` once or clear the cache.

    Args:
        root: The folder holding one sub-folder per class.
        classes: Class folder names to read, in label order; default: every sub-folder, sorted.
        name: The dataset's name; default: ``npy_folder:<folder name>``.

    Returns:
        The images ``(N, H, W)`` or ``(N, H, W, C)`` uint8, the labels and the class names.

    Raises:
        DatasetNotFoundError: If ``root`` (or a requested class folder) does not exist or holds no class
            folder.
        tta.errors.TTAInputError: (a ``ValueError``) On an empty class folder, a file that is not one
            uint8 image, or images of different
            shapes.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"npy_folder: {str(base)!r} is not a directory; set `dataset_kwargs: {{root: <folder>}}` to a "
            "folder holding one sub-folder of .npy images per class"
        )
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise DatasetNotFoundError(f"npy_folder: {str(base)!r} holds no class sub-folder")
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetNotFoundError(
                f"npy_folder: class folders {missing} are not in {str(base)!r} (it has: {', '.join(found)})"
            )
        if len(set(classes)) != len(classes):
            raise TTAInputError(f"npy_folder: classes lists a folder more than once: {classes}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: dict[tuple[int, ...], Path] = {}
    for label, cls in enumerate(classes):
        files = sorted((base / cls).glob("*.npy"))
        if not files:
            raise TTAInputError(f"npy_folder: class folder {str(base / cls)!r} holds no .npy file")
        for path in files:
            img = _read_image(path)
            first.setdefault(img.shape, path)
            images.append(img)
            labels.append(label)
    if len(first) > 1:
        shapes = "; ".join(f"{shape} (e.g. {path})" for shape, path in first.items())
        raise TTAInputError(
            f"npy_folder: images of {str(base)!r} differ in shape: {shapes}; resize them to one"
        )
    return ImageDataset(
        name=name or f"npy_folder:{base.name}",
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=list(classes),
    )
