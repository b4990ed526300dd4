"""Feature extraction with a frozen backbone, and the cached path ``get_features``."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tta.data._cache import FeatureCache
from tta.data._datasets import ImageDataset
from tta.data._tasks import TaskSpec, load_task
from tta.errors import TTAInputError

if TYPE_CHECKING:
    from tta.backbones._base import Backbone

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


def _inputs(dataset: Any) -> Any:
    """The dataset's raw inputs: ``.inputs`` (images or texts), else ``.images``."""
    inputs = getattr(dataset, "inputs", None)
    return dataset.images if inputs is None else inputs


def extract_features(
    backbone: Backbone,
    dataset: ImageDataset,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "",
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    trainer_kwargs: dict[str, Any] | None = None,
    shard_root: str | os.PathLike[str] | None = None,
    store: Callable[[Tensor], Any] | None = None,
    reload: Callable[[], Tensor | None] | None = None,
    tag: str = "",
) -> Tensor:
    """Penultimate features of every input of a dataset, through a Lightning predict pass.

    Inputs are preprocessed per batch (:meth:`tta.backbones.ImagePreprocess.batch`) in the DataLoader
    and run through the frozen backbone by ``trainer.predict`` (inference mode). Under a distributed
    strategy (``strategy="ddp", devices=N``, multi-node with ``num_nodes``) every rank extracts a share of
    the batches and writes its shard; rank zero assembles them in index order, so the result is the same
    rows in the same order as with one process (see :mod:`tta.modules`).

    Args:
        backbone: The frozen encoder.
        dataset: The inputs (``dataset.inputs``, else ``dataset.images``), in order.
        batch_size: Inputs per forward pass.
        num_workers: DataLoader worker processes doing the preprocessing (0: in the main process).
        progress: Show Lightning's progress bar.
        description: Label of the log line (default: the dataset's name and split).
        accelerator: Trainer ``accelerator`` (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices: Trainer ``devices`` (default one device).
        strategy: Trainer ``strategy`` (``"auto"``, ``"ddp"``, a Strategy instance).
        num_nodes: Trainer ``num_nodes``.
        trainer_kwargs: Further ``lightning.pytorch.Trainer`` arguments (they override the above).
        shard_root: Directory, seen by every rank, for the temporary shards (default: the system
            temporary directory; give a shared filesystem for multi-node runs).
        store: Called once, on rank zero, with the assembled features (:func:`get_features` writes the
            cache entry with it).
        reload: With several ranks, how every rank reads the stored features back (after a barrier);
            required with ``store``.
        tag: Part of the temporary shard directory's name (the cache key).

    Returns:
        float32 tensor ``(N, d)`` on the CPU, row ``i`` for input ``i`` (on every rank).
    """
    from tta.modules._extraction import run_extraction

    if batch_size < 1:
        raise TTAInputError(f"batch_size must be a positive integer, got {batch_size}")
    label = description or f"{backbone.name} · {dataset.name}" + (
        f" {dataset.split}" if getattr(dataset, "split", None) else ""
    )
    start = time.perf_counter()
    out = run_extraction(
        backbone,
        _inputs(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        trainer_kwargs=trainer_kwargs,
        shard_root=shard_root,
        store=store,
        reload=reload,
        tag=tag,
    )
    _log_rate(len(dataset), out, time.perf_counter() - start, label)
    return out


def _log_rate(n: int, out: Tensor, elapsed: float, label: str) -> None:
    log.info(
        "extracted %d features (d=%d) in %.1f s (%.1f inputs/s): %s",
        n,
        out.shape[1] if out.ndim == 2 else 0,
        elapsed,
        n / max(elapsed, 1e-9),
        label,
    )


def get_features(
    backbone: Backbone,
    spec: TaskSpec,
    split: str,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    trainer_kwargs: dict[str, Any] | None = None,
) -> ExtractedFeatures:
    """Features and labels of a task's split, from the cache when present.

    On a miss (or a corrupt entry) the task is loaded and features are extracted by a predict pass
    (:func:`extract_features`); rank zero writes the cache entry and, with several ranks, every rank
    reads it back (checksum verified) after a barrier.

    Args:
        backbone: The frozen encoder.
        spec: The task.
        split: ``"train"`` or ``"test"``.
        cache: The feature cache; ``None`` always extracts and stores nothing.
        batch_size: Inputs per forward pass.
        num_workers: DataLoader workers for the preprocessing.
        progress: Show progress bars and a one-line cache hit/miss report on stderr.
        accelerator: Trainer ``accelerator`` of the extraction.
        devices: Trainer ``devices`` of the extraction.
        strategy: Trainer ``strategy`` of the extraction (``"ddp"``: every rank extracts a shard).
        num_nodes: Trainer ``num_nodes`` of the extraction.
        trainer_kwargs: Further Trainer arguments of the extraction.

    Returns:
        ``(features (N, d) float32, labels (N,) int64)``, labels in ``0..k-1`` (see
        :func:`tta.data.load_task`), as an :class:`ExtractedFeatures` that also carries
        ``class_names`` and ``cache_hit``.
    """
    if split not in ("train", "test"):
        raise TTAInputError(f"split must be 'train' or 'test', got {split!r}")
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
    labels = dataset.labels.clone()
    inputs = _inputs(dataset)
    start = time.perf_counter()
    store = reload = None
    if cache is not None and key is not None:
        entry_key, entry_cache = key, cache

        def store(features: Tensor) -> None:
            try:
                _save_entry(features)
            except OSError as err:  # a full disk leaves no entry (atomic writes): say so, in one line
                from tta._preflight import io_error

                friendly = io_error(
                    err,
                    entry_cache.root,
                    "the feature cache entry",
                    "point the cache at a disk with room (TTA_CACHE_DIR or --data.cache_dir) or turn it off "
                    "(--data.use_cache false)",
                )
                if friendly is None:
                    raise
                raise friendly from err

        def _save_entry(features: Tensor) -> None:
            elapsed = time.perf_counter() - start
            entry_cache.save(
                entry_key,
                features,
                labels,
                meta={
                    "backbone": backbone.cache_key(),
                    "task": asdict(spec),
                    "split": split,
                    "class_names": dataset.class_names,
                    "n": len(dataset),
                    "input_shape": list(inputs.shape[1:]) if isinstance(inputs, Tensor) else None,
                    "seconds": round(elapsed, 3),
                    "inputs_per_second": round(len(dataset) / max(elapsed, 1e-9), 2),
                    "torch": torch.__version__,
                },
            )

        def reload() -> Tensor | None:
            loaded = entry_cache.load(entry_key)
            return None if loaded is None else loaded[0]

    features = extract_features(
        backbone,
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        description=f"{backbone.name} · {spec.describe()} {split}",
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        trainer_kwargs=trainer_kwargs,
        shard_root=cache.root if cache is not None else None,
        store=store,
        reload=reload,
        tag=key or "",
    )
    return ExtractedFeatures(features, labels, dataset.class_names, cache_hit=False, key=key)


def _report(show: bool, message: str) -> None:
    log.info(message)
    if show and _is_rank_zero():
        from rich.console import Console

        Console(file=sys.stderr).print(message, highlight=False)


def _is_rank_zero() -> bool:
    """Whether this process is global rank zero (from the launcher's environment variables)."""
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
