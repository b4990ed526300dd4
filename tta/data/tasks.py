"""Task definitions: a dataset, a class subset, per-class caps, a seed.

A :class:`TaskSpec` is a plain dataclass, so a task is written directly in a LightningCLI / jsonargparse
YAML config::

    task:
      dataset: fashion_mnist
      classes: [0, 2, 4]        # labels become 0, 1, 2 in this order
      train_per_class: 500
      test_per_class: 200
      seed: 0

Every random choice is per class, with a ``torch.Generator`` seeded from ``(seed, purpose, class id)``:
the samples drawn for a class do not depend on which other classes the task holds, and a smaller cap
picks a subset of what a larger cap picks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tta.data.datasets import ImageDataset, dataset_splits
from tta.plugins import DATASETS

__all__ = ["TaskSpec", "load_task", "split_dataset"]


@dataclass(frozen=True)
class TaskSpec:
    """A classification task drawn from a registered dataset.

    Args:
        dataset: Registry name of the dataset (``tta plugins list`` shows them), e.g. ``fashion_mnist``.
        classes: Class ids of the dataset to keep; labels are remapped to ``0..k-1`` in this order.
            ``None`` keeps every class.
        train_per_class: Cap on the training samples per class (a seeded random subset); ``None`` keeps
            all.
        test_per_class: Cap on the test samples per class; ``None`` keeps all.
        test_fraction: Fraction of each class held out for testing, for datasets without an official
            train/test split (stratified, seeded); ignored otherwise.
        seed: Seed of the split and of the per-class subsets.
        dataset_kwargs: Keyword arguments of the dataset loader, e.g. ``{"root": "data/"}``.
    """

    dataset: str
    classes: list[int] | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    dataset_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("train_per_class", "test_per_class"):
            cap = getattr(self, name)
            if cap is not None and cap < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {cap}")
        if self.classes is not None:
            if len(self.classes) == 0:
                raise ValueError("classes must name at least one class (or be None for all)")
            dup = sorted({c for c in self.classes if list(self.classes).count(c) > 1})
            if dup:
                raise ValueError(f"classes lists class ids {dup} more than once")

    def describe(self) -> str:
        """A short human-readable name, e.g. ``fashion_mnist[0,2,4] seed=0``."""
        cls = "" if self.classes is None else "[" + ",".join(str(c) for c in self.classes) + "]"
        return f"{self.dataset}{cls} seed={self.seed}"


def _generator(seed: int, purpose: str, class_id: int) -> torch.Generator:
    digest = hashlib.sha256(f"tta/{seed}/{purpose}/{class_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def split_dataset(
    dataset: ImageDataset, test_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """Stratified, seeded train/test split of a dataset without an official one.

    Each class with ``n`` samples puts ``round(n · test_fraction)`` of them (at least 1 and at most
    ``n - 1`` when ``n ≥ 2``) in the test split.

    Args:
        dataset: The whole dataset.
        test_fraction: Fraction of each class for the test split, in (0, 1).
        seed: Seed of the per-class permutations.

    Returns:
        ``(train, test)``, each with indices in the dataset's order.
    """
    train_idx: list[Tensor] = []
    test_idx: list[Tensor] = []
    for c in torch.unique(dataset.labels).tolist():
        idx = torch.nonzero(dataset.labels == c).flatten()
        n = idx.numel()
        n_test = round(n * test_fraction)
        if n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        perm = idx[torch.randperm(n, generator=_generator(seed, "split", c))]
        test_idx.append(perm[:n_test])
        train_idx.append(perm[n_test:])
    train = torch.sort(torch.cat(train_idx)).values
    test = torch.sort(torch.cat(test_idx)).values
    return dataset.subset(train, split="train"), dataset.subset(test, split="test")


def _select(dataset: ImageDataset, spec: TaskSpec, cap: int | None, split: str) -> ImageDataset:
    """Keep ``spec.classes`` (remapped), at most ``cap`` seeded random samples of each."""
    classes = list(range(dataset.num_classes)) if spec.classes is None else list(spec.classes)
    chosen: list[Tensor] = []
    new_labels: list[Tensor] = []
    for new, c in enumerate(classes):
        idx = torch.nonzero(dataset.labels == c).flatten()
        n = idx.numel()
        if n == 0:
            raise ValueError(
                f"task {spec.describe()}: class {c} ({_class_name(dataset, c)}) has no samples in the "
                f"{split} split"
            )
        if cap is not None:
            if n < cap:
                raise ValueError(
                    f"task {spec.describe()}: class {c} ({_class_name(dataset, c)}) has {n} samples in the "
                    f"{split} split, fewer than the {cap} asked ({split}_per_class={cap})"
                )
            perm = torch.randperm(n, generator=_generator(spec.seed, f"cap/{split}", c))
            idx = torch.sort(idx[perm[:cap]]).values
        chosen.append(idx)
        new_labels.append(torch.full((idx.numel(),), new, dtype=torch.int64))
    order = torch.cat(chosen)
    labels = torch.cat(new_labels)
    perm = torch.argsort(order)  # keep the dataset's sample order
    order, labels = order[perm], labels[perm]
    name = dataset.name if spec.classes is None else f"{dataset.name}[{','.join(map(str, classes))}]"
    return ImageDataset(
        name=name,
        images=dataset.images[order],
        labels=labels,
        class_names=[dataset.class_names[c] for c in classes],
        split=split,
    )


def _class_name(dataset: ImageDataset, c: int) -> str:
    return repr(dataset.class_names[c]) if 0 <= c < len(dataset.class_names) else "?"


def load_task(spec: TaskSpec | Mapping[str, Any]) -> tuple[ImageDataset, ImageDataset]:
    """Load a task's train and test splits.

    The dataset's official split is used when it has one; otherwise a stratified seeded split with
    ``spec.test_fraction``. Then the class subset is kept (labels remapped to ``0..k-1`` in the order of
    ``spec.classes``) and each class is capped to ``train_per_class`` / ``test_per_class`` samples, a
    seeded random subset. Same spec, same samples.

    Args:
        spec: The task (or a mapping of its fields).

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: On unknown class ids, a class with fewer samples than a cap asks (named), or an
            empty split.
        tta.plugins.PluginNotFoundError: If the dataset is not registered.
    """
    import tta.data.datasets  # noqa: F401  (registers the built-ins)

    if not isinstance(spec, TaskSpec):
        spec = TaskSpec(**dict(spec))
    loader = DATASETS.get(spec.dataset)
    kwargs = {k: v for k, v in (spec.dataset_kwargs or {}).items() if v is not None}
    if dataset_splits(loader):
        train_full, test_full = loader(split="train", **kwargs), loader(split="test", **kwargs)
    else:
        train_full, test_full = split_dataset(loader(**kwargs), spec.test_fraction, spec.seed)
    num_classes = max(train_full.num_classes, test_full.num_classes)
    if spec.classes is not None:
        unknown = [c for c in spec.classes if not 0 <= c < num_classes]
        if unknown:
            raise ValueError(
                f"task {spec.describe()}: unknown class ids {unknown}; {spec.dataset} has classes "
                f"0..{num_classes - 1} ({', '.join(train_full.class_names)})"
            )
    train = _select(train_full, spec, spec.train_per_class, "train")
    test = _select(test_full, spec, spec.test_per_class, "test")
    for part in (train, test):
        if len(part) == 0:  # pragma: no cover - _select raises per class first
            raise ValueError(f"task {spec.describe()}: the {part.split} split is empty")
    return train, test
