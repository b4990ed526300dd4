"""Task definitions: a dataset, a class subset, per-class caps, label merging, domain shifts, a seed.

A :class:`TaskSpec` is a plain dataclass, so a task is written directly in a LightningCLI / jsonargparse
YAML config::

    task:
      dataset: cifar10
      classes: [cat, dog, 0]    # names or ids; labels become 0, 1, 2 in this order
      train_per_class: 500
      test_per_class: 200
      seed: 0
      shifts:
        - {name: rotation, degrees: 30}

    task:
      dataset: imagenet
      random_classes: 100       # the ImageNet-K protocol: K classes drawn with `seed`, in class-id order
      train_per_class: 50

Every random choice is per class, with a ``torch.Generator`` seeded from ``(seed, purpose, class id)``:
the samples drawn for a class do not depend on which other classes the task holds, and a smaller cap
picks a subset of what a larger cap picks. Likewise ``random_classes: K`` takes the first ``K`` classes
of one seeded permutation, so a smaller ``K`` picks a subset of a larger one's classes.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from tta.data._datasets import ImageDataset, LazyImageDataset, TextDataset, dataset_splits
from tta.data._shifts import apply_shifts, validate_shifts
from tta.errors import TTAInputError
from tta.plugins import DATASETS

__all__ = ["TaskSpec", "load_task", "resolve_classes", "split_dataset"]

_D = TypeVar("_D", ImageDataset, LazyImageDataset, TextDataset)


@dataclass(frozen=True)
class TaskSpec:
    """A classification task drawn from a registered dataset.

    Args:
        dataset: Registry name of the dataset (``tta plugins list`` shows them), e.g. ``fashion_mnist``.
        classes: Classes of the dataset to keep, by id (int) or name (str, matched against the dataset's
            class names); labels are remapped to ``0..k-1`` in this order. ``None`` keeps every class.
            With ``random_classes``, the pool to draw from.
        train_per_class: Cap on the training samples per class (a seeded random subset); ``None`` keeps
            all.
        test_per_class: Cap on the test samples per class; ``None`` keeps all.
        test_fraction: Fraction of each class held out for testing, for datasets without an official
            train/test split (stratified, seeded); ignored otherwise.
        seed: Seed of the split, of the per-class subsets, of ``random_classes`` and of random shifts.
        dataset_kwargs: Keyword arguments of the dataset loader, e.g. ``{"root": "data/"}``.
        random_classes: Keep ``K`` classes drawn at random with ``seed`` (from ``classes`` if given, else
            from all): the first ``K`` of a seeded permutation, kept in increasing class-id order. Same
            ``K``, pool and seed, same classes.
        label_map: Rename or merge classes: ``{old: new}``, ``old`` a kept class (name or id), ``new`` the
            name of its new class. Classes mapped to the same name merge; unmapped classes keep their
            name; labels are numbered by first appearance in the class order. Caps apply to the original
            classes, before merging.
        shifts: Domain shifts applied in order to the images of both splits, each a mapping with a
            ``name`` and its parameters: ``{name: rotation, degrees: 30}``, ``{name: inversion}``,
            ``{name: noise, std: 20}``, ``{name: blur, sigma: 1.5}``, ``{name: resolution, size: 8}``
            (:mod:`tta.data`).
    """

    dataset: str
    classes: list[int | str] | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    dataset_kwargs: dict[str, Any] | None = None
    random_classes: int | None = None
    label_map: dict[str, str] | None = None
    shifts: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise TTAInputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("train_per_class", "test_per_class"):
            cap = getattr(self, name)
            if cap is not None and cap < 1:
                raise TTAInputError(f"{name} must be a positive integer or None, got {cap}")
        if self.classes is not None:
            if len(self.classes) == 0:
                raise TTAInputError("classes must name at least one class (or be None for all)")
            bad = [c for c in self.classes if isinstance(c, bool) or not isinstance(c, (int, str))]
            if bad:
                raise TTAInputError(f"classes must be class ids (int) or names (str), got {bad}")
            dup = sorted({str(c) for c in self.classes if list(self.classes).count(c) > 1})
            if dup:
                raise TTAInputError(f"classes lists class ids {dup} more than once")
        if self.random_classes is not None:
            if isinstance(self.random_classes, bool) or self.random_classes < 1:
                raise TTAInputError(
                    f"random_classes must be a positive integer or None, got {self.random_classes}"
                )
            if self.classes is not None and self.random_classes > len(self.classes):
                raise TTAInputError(
                    f"random_classes={self.random_classes} but classes lists only {len(self.classes)} "
                    "to draw from"
                )
        if self.label_map is not None:
            if not isinstance(self.label_map, Mapping) or not self.label_map:
                raise TTAInputError(
                    "label_map must be a non-empty mapping {old class: new class name}, or None"
                )
            # JSON-friendly (the cache key hashes it): keys and values as strings
            object.__setattr__(self, "label_map", {str(k): str(v) for k, v in self.label_map.items()})
        if self.shifts is not None:
            validate_shifts(self.shifts)
            object.__setattr__(self, "shifts", [dict(entry) for entry in self.shifts])

    def describe(self) -> str:
        """A short human-readable name, e.g. ``fashion_mnist[0,2,4] seed=0``."""
        cls = "" if self.classes is None else "[" + ",".join(str(c) for c in self.classes) + "]"
        if self.random_classes is not None:
            cls += f"{{random {self.random_classes}}}"
        if self.label_map:
            cls += "{" + ",".join(f"{k}->{v}" for k, v in self.label_map.items()) + "}"
        if self.shifts:
            cls += "+" + "+".join(str(e["name"]) for e in self.shifts)
        return f"{self.dataset}{cls} seed={self.seed}"


def _generator(seed: int, purpose: str, class_id: int) -> torch.Generator:
    digest = hashlib.sha256(f"tta/{seed}/{purpose}/{class_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of a stratified, seeded train/test split (see :func:`split_dataset`).

    Args:
        labels: Class ids, shape ``(n,)``.
        test_fraction: Fraction of each class for the test split, in (0, 1).
        seed: Seed of the per-class permutations.

    Returns:
        ``(train indices, test indices)``, each sorted.
    """
    train_idx: list[Tensor] = []
    test_idx: list[Tensor] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        n_test = round(n * test_fraction)
        if n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        perm = idx[torch.randperm(n, generator=_generator(seed, "split", c))]
        test_idx.append(perm[:n_test])
        train_idx.append(perm[n_test:])
    return torch.sort(torch.cat(train_idx)).values, torch.sort(torch.cat(test_idx)).values


def split_dataset(dataset: _D, test_fraction: float, seed: int) -> tuple[_D, _D]:
    """Stratified, seeded train/test split of a dataset without an official one.

    Each class with ``n`` samples puts ``round(n · test_fraction)`` of them (at least 1 and at most
    ``n - 1`` when ``n ≥ 2``) in the test split.

    Args:
        dataset: The whole dataset (images, lazily decoded images or texts).
        test_fraction: Fraction of each class for the test split, in (0, 1).
        seed: Seed of the per-class permutations.

    Returns:
        ``(train, test)``, each with indices in the dataset's order.
    """
    train, test = stratified_split(dataset.labels, test_fraction, seed)
    return dataset.subset(train, split="train"), dataset.subset(test, split="test")


def _list_names(class_names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(class_names[:limit])
    return shown + (f", … ({len(class_names)} in all)" if len(class_names) > limit else "")


def _resolve_one(ref: int | str, class_names: Sequence[str], where: str) -> int | None:
    """A class id from an id or a name; ``None`` for an out-of-range id (the caller lists them)."""
    if isinstance(ref, int):
        return ref if 0 <= ref < len(class_names) else None
    if ref in class_names:
        matches = [i for i, n in enumerate(class_names) if n == ref]
        if len(matches) > 1:
            raise TTAInputError(f"{where}: class name {ref!r} is ambiguous (ids {matches}); use an id")
        return matches[0]
    folded = [i for i, n in enumerate(class_names) if n.casefold() == ref.casefold()]
    if len(folded) == 1:
        return folded[0]
    if ref.lstrip("-").isdigit():
        value = int(ref)
        return value if 0 <= value < len(class_names) else None
    close = difflib.get_close_matches(ref, list(class_names), n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise TTAInputError(
        f"{where}: no class named {ref!r}.{hint} Classes: {_list_names(class_names)} "
        f"(or ids 0..{len(class_names) - 1})"
    )


def resolve_classes(spec: TaskSpec, class_names: Sequence[str]) -> list[int]:
    """The class ids a task keeps, in label order.

    ``spec.classes`` entries are ids or names (exact, else case-insensitive, else a decimal string read as
    an id). With ``spec.random_classes = K``, ``K`` of them (or of all classes) are drawn: the first ``K``
    of a permutation seeded by ``spec.seed``, returned in increasing class-id order.

    Args:
        spec: The task.
        class_names: The dataset's class names.

    Returns:
        Class ids of the dataset.

    Raises:
        ValueError: On unknown ids or names (with close matches), a class named twice, or more random
            classes than there are.
    """
    where = f"task {spec.describe()}"
    if spec.classes is None:
        pool = list(range(len(class_names)))
    else:
        resolved = [_resolve_one(c, class_names, where) for c in spec.classes]
        unknown = [c for c, r in zip(spec.classes, resolved, strict=True) if r is None]
        if unknown:
            raise TTAInputError(
                f"{where}: unknown class ids {unknown}; {spec.dataset} has classes "
                f"0..{len(class_names) - 1} ({_list_names(class_names)})"
            )
        pool = [int(r) for r in resolved if r is not None]
        dup = sorted({f"{class_names[c]!r} (id {c})" for c in pool if pool.count(c) > 1})
        if dup:
            raise TTAInputError(f"{where}: classes names {', '.join(dup)} more than once")
    if spec.random_classes is not None:
        if spec.random_classes > len(pool):
            raise TTAInputError(
                f"{where}: random_classes={spec.random_classes} but there are only {len(pool)} classes "
                "to draw from"
            )
        perm = torch.randperm(len(pool), generator=_generator(spec.seed, "random_classes", len(pool)))
        pool = sorted(pool[i] for i in perm[: spec.random_classes].tolist())
    return pool


def _select(
    dataset: _D, spec: TaskSpec, classes: list[int], cap: int | None, split: str
) -> tuple[_D, Tensor]:
    """Keep ``classes`` (remapped to ``0..k-1``), at most ``cap`` seeded random samples of each.

    Returns:
        The selection and the index of each kept sample in ``dataset``.
    """
    chosen: list[Tensor] = []
    new_labels: list[Tensor] = []
    for new, c in enumerate(classes):
        idx = torch.nonzero(dataset.labels == c).flatten()
        n = idx.numel()
        if n == 0:
            raise TTAInputError(
                f"task {spec.describe()}: class {c} ({_class_name(dataset, c)}) has no samples in the "
                f"{split} split"
            )
        if cap is not None:
            if n < cap:
                raise TTAInputError(
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
    selected = spec.classes is not None or spec.random_classes is not None
    name = f"{dataset.name}[{','.join(map(str, classes))}]" if selected else dataset.name
    part = dataset.subset(order, split=split)
    out = replace(part, name=name, labels=labels, class_names=[dataset.class_names[c] for c in classes])
    return out, order


def _class_name(dataset: Any, c: int) -> str:
    return repr(dataset.class_names[c]) if 0 <= c < len(dataset.class_names) else "?"


def _label_mapping(
    spec: TaskSpec, class_names: Sequence[str], classes: list[int]
) -> tuple[Tensor, list[str]]:
    """``spec.label_map`` as (new label of each task label, new class names)."""
    where = f"task {spec.describe()}: label_map"
    renamed = {c: class_names[c] for c in classes}
    for key, new in (spec.label_map or {}).items():
        c = _resolve_one(key, class_names, where)
        if c is None or c not in renamed:
            kept = ", ".join(f"{class_names[k]!r} ({k})" for k in classes)
            raise TTAInputError(f"{where}: {key!r} is not one of the task's classes: {kept}")
        renamed[c] = new
    names: list[str] = []
    for c in classes:
        if renamed[c] not in names:
            names.append(renamed[c])
    return torch.tensor([names.index(renamed[c]) for c in classes], dtype=torch.int64), names


def load_task(spec: TaskSpec | Mapping[str, Any]) -> tuple[Any, Any]:
    """Load a task's train and test splits.

    The dataset's official split is used when it has one; otherwise a stratified seeded split with
    ``spec.test_fraction``. Then the classes are resolved (:func:`resolve_classes`: ids or names,
    ``random_classes``) and kept with labels remapped to ``0..k-1`` in that order, each capped to
    ``train_per_class`` / ``test_per_class`` samples (a seeded random subset); ``label_map`` merges or
    renames classes; lazily decoded images are decoded (only the kept ones); ``shifts`` are applied. Same
    spec, same samples.

    Args:
        spec: The task (or a mapping of its fields).

    Returns:
        ``(train, test)``: :class:`~tta.data.ImageDataset` s for image datasets,
        :class:`~tta.data.TextDataset` s for text ones.

    Raises:
        ValueError: On unknown class ids or names, a class with fewer samples than a cap asks (named),
            an empty split, or shifts on a text dataset.
        tta.plugins.PluginNotFoundError: If the dataset is not registered.
    """
    import tta.data._datasets  # noqa: F401  (registers the built-ins)

    if not isinstance(spec, TaskSpec):
        spec = TaskSpec(**dict(spec))
    loader = DATASETS.get(spec.dataset)
    kwargs = {k: v for k, v in (spec.dataset_kwargs or {}).items() if v is not None}
    if dataset_splits(loader, kwargs):
        train_full, test_full = loader(split="train", **kwargs), loader(split="test", **kwargs)
    else:
        train_full, test_full = split_dataset(loader(**kwargs), spec.test_fraction, spec.seed)
    if spec.shifts and isinstance(train_full, TextDataset):
        raise TTAInputError(
            f"task {spec.describe()}: shifts apply to images, but {spec.dataset} is a text dataset"
        )
    class_names = max(train_full.class_names, test_full.class_names, key=len)
    classes = resolve_classes(spec, class_names)
    parts = []
    for full, cap, split in (
        (train_full, spec.train_per_class, "train"),
        (test_full, spec.test_per_class, "test"),
    ):
        part, ids = _select(full, spec, classes, cap, split)
        if spec.label_map:
            mapping, names = _label_mapping(spec, class_names, classes)
            part = replace(part, labels=mapping[part.labels], class_names=names)
        if isinstance(part, LazyImageDataset):
            part = part.load()
        if spec.shifts:
            part = replace(part, images=apply_shifts(part.images, spec.shifts, spec.seed, split, ids))
        if len(part) == 0:  # pragma: no cover - _select raises per class first
            raise TTAInputError(f"task {spec.describe()}: the {split} split is empty")
        parts.append(part)
    return parts[0], parts[1]
