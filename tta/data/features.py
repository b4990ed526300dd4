"""Feature extraction with a frozen backbone, and the cached path ``get_features``."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tta.data.cache import FeatureCache
from tta.data.datasets import ImageDataset
from tta.data.tasks import TaskSpec, load_task

if TYPE_CHECKING:
    from tta.backbones.base import Backbone

__all__ = ["ExtractedFeatures", "extract_features", "get_features"]

log = logging.getLogger(__name__)


class ExtractedFeatures(tuple):
    """``(features, labels)`` of a task split: unpacks as a 2-tuple and carries where it came from.

    Attributes:
        features: float32 ``(N, d)``.
        labels: int64 ``(N,)`` in ``0..k-1``.
        class_names: Name of each label.
        cache_hit: Whether the features were read from the cache.
        key: The cache key (``None`` without a cache).
    """

    features: Tensor
    labels: Tensor
    class_names: list[str]
    cache_hit: bool
    key: str | None

    def __new__(
        cls,
        features: Tensor,
        labels: Tensor,
        class_names: list[str],
        cache_hit: bool = False,
        key: str | None = None,
    ) -> ExtractedFeatures:
        """Wrap ``(features, labels)``.

        Args:
            features: float32 ``(N, d)``.
            labels: int64 ``(N,)``.
            class_names: Name of each label.
            cache_hit: Whether the features came from the cache.
            key: The cache key, if any.
        """
        obj = super().__new__(cls, (features, labels))
        obj.features, obj.labels = features, labels
        obj.class_names, obj.cache_hit, obj.key = list(class_names), cache_hit, key
        return obj

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickling
        return (self.features, self.labels, self.class_names, self.cache_hit, self.key)


class _PreprocessedBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a dataset, preprocessed (so DataLoader workers can overlap it with the forward)."""

    def __init__(self, images: Tensor, preprocess: Any, batch_size: int) -> None:
        self.images = images
        self.preprocess = preprocess
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (self.images.shape[0] + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> Tensor:
        chunk = self.images[i * self.batch_size : (i + 1) * self.batch_size]
        batch = getattr(self.preprocess, "batch", None)
        if batch is not None:
            return batch(chunk)
        return torch.stack([self.preprocess(img) for img in chunk])


def _progress(total: int, description: str, enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="progress.data.speed")

    from rich.console import Console

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
        transient=False,
    )


def extract_features(
    backbone: Backbone,
    dataset: ImageDataset,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "",
) -> Tensor:
    """Penultimate features of every image of a dataset.

    Images are preprocessed per batch on uint8 tensors (:meth:`tta.backbones.ImagePreprocess.batch`)
    and run through the frozen backbone under ``torch.inference_mode``; the result is an ordinary
    (non-inference) tensor.

    Args:
        backbone: The frozen encoder.
        dataset: The images, in order.
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes doing the preprocessing (0: in the main process).
        progress: Show a rich progress bar with images/s on stderr.
        description: Label of the progress bar (default: the dataset's name and split).

    Returns:
        float32 tensor ``(N, d)``, row ``i`` for image ``i``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(dataset)
    device = next(iter(backbone.parameters()), torch.empty(0)).device
    loader = torch.utils.data.DataLoader(
        _PreprocessedBatches(dataset.images, backbone.preprocess(), batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    label = description or f"{backbone.name} · {dataset.name}" + (
        f" {dataset.split}" if dataset.split else ""
    )
    backbone.eval()
    chunks: list[Tensor] = []
    start = time.perf_counter()
    with _progress(n, label, progress) as bar:
        task = bar.add_task(label, total=n)
        with torch.inference_mode():
            for x in loader:
                feats = backbone(x.to(device, non_blocking=True))
                chunks.append(feats.float().cpu())
                bar.advance(task, x.shape[0])
    # torch.cat outside inference mode gives a normal tensor, usable in autograd graphs later
    out = torch.cat(chunks) if chunks else torch.empty(0, backbone.feature_dim)
    elapsed = time.perf_counter() - start
    log.info(
        "extracted %d features (d=%d) in %.1f s (%.1f images/s): %s",
        n,
        out.shape[1],
        elapsed,
        n / max(elapsed, 1e-9),
        label,
    )
    return out


def get_features(
    backbone: Backbone,
    spec: TaskSpec,
    split: str,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> ExtractedFeatures:
    """Features and labels of a task's split, from the cache when present.

    On a miss (or a corrupt entry) the task is loaded, features are extracted and the entry is saved.

    Args:
        backbone: The frozen encoder.
        spec: The task.
        split: ``"train"`` or ``"test"``.
        cache: The feature cache; ``None`` always extracts and stores nothing.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers for the preprocessing.
        progress: Show progress bars and a one-line cache hit/miss report on stderr.

    Returns:
        ``(features (N, d) float32, labels (N,) int64)``, labels in ``0..k-1`` (see
        :func:`tta.data.tasks.load_task`), as an :class:`ExtractedFeatures` that also carries
        ``class_names`` and ``cache_hit``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = None
    if cache is not None:
        key = cache.key(backbone.cache_key(), spec, split)
        hit = cache.load(key)
        if hit is not None:
            _report(
                progress,
                f"feature cache hit: {backbone.name} · {spec.describe()} {split} "
                f"({hit[0].shape[0]}×{hit[0].shape[1]}) [{key[:12]}]",
            )
            meta = (cache.manifest(key) or {}).get("meta", {})
            names = meta.get("class_names")
            if not isinstance(names, list):  # an entry saved by other code: ask the task
                train, test = load_task(spec)
                names = (train if split == "train" else test).class_names
            return ExtractedFeatures(hit[0], hit[1], names, cache_hit=True, key=key)
        _report(progress, f"feature cache miss: {backbone.name} · {spec.describe()} {split} [{key[:12]}]")
    train, test = load_task(spec)
    dataset = train if split == "train" else test
    start = time.perf_counter()
    features = extract_features(
        backbone,
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        description=f"{backbone.name} · {spec.describe()} {split}",
    )
    elapsed = time.perf_counter() - start
    labels = dataset.labels.clone()
    if cache is not None and key is not None:
        from dataclasses import asdict

        cache.save(
            key,
            features,
            labels,
            meta={
                "backbone": backbone.cache_key(),
                "task": asdict(spec),
                "split": split,
                "class_names": dataset.class_names,
                "n": len(dataset),
                "image_shape": list(dataset.images.shape[1:]),
                "seconds": round(elapsed, 3),
                "images_per_second": round(len(dataset) / max(elapsed, 1e-9), 2),
                "torch": torch.__version__,
            },
        )
    return ExtractedFeatures(features, labels, dataset.class_names, cache_hit=False, key=key)


def _report(show: bool, message: str) -> None:
    log.info(message)
    if show:
        from rich.console import Console

        Console(file=sys.stderr).print(message, highlight=False)
