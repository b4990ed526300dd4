"""Feature extraction as a Lightning predict pass, under any strategy (glue around the frozen backbone).

The pieces:

- :class:`PreprocessedChunks`: item ``i`` is chunk ``i`` of the inputs (``batch_size`` rows) with its global
  sample indices, preprocessed in one go by the backbone's ``preprocess().batch``. Whole chunks are what
  the sampler deals out, so every rank runs the same batches as a single process would.
- :class:`FeatureExtractor`: a LightningModule around the frozen backbone whose ``predict_step`` returns
  ``{"indices", "features"}`` and whose ``predict_dataloader`` deals the chunks to the ranks with a
  DistributedSampler (padding repeats are dropped by index at assembly).
- :class:`ShardWriter`: a :class:`~lightning.pytorch.callbacks.BasePredictionWriter`. With one process it
  keeps the features in memory. With several, every rank writes its shard (indices + features,
  safetensors) into a temporary ``.partial-*`` directory; after a barrier rank zero assembles the rows in
  index order (dropping the DistributedSampler's padding duplicates) and stores the result (a cache entry,
  or an ``assembled.safetensors`` file); after a second barrier every rank loads it, and rank zero removes
  the shard directory.
- :func:`assemble_shards`: the pure-torch assembly, ordered by index.
- :func:`run_extraction`: builds the Trainer (no logger, no checkpointing) and calls ``trainer.predict``.

The shard directory must be on a filesystem every rank sees (the cache directory for cached extraction:
put ``$TTA_CACHE_DIR`` on a shared filesystem for multi-node runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from tta._quiet import quiet_lightning
from tta.data._cache import PARTIAL_PREFIX

if TYPE_CHECKING:
    from tta.backbones._base import Backbone

__all__ = [
    "PARTIAL_PREFIX",
    "FeatureExtractor",
    "PreprocessedChunks",
    "ShardWriter",
    "assemble_shards",
    "run_extraction",
]

log = logging.getLogger(__name__)


def assemble_shards(indices: Sequence[Tensor], features: Sequence[Tensor], n: int) -> Tensor:
    """Rows of every shard, in global index order, each index once.

    A DistributedSampler pads the last ranks with repeats of the first items, so an index may occur more
    than once; the first occurrence is kept.

    Args:
        indices: Per shard, the global sample indices ``(n_i,)`` of its rows.
        features: Per shard, ``(n_i, d)`` features.
        n: Number of samples; every index in ``0..n-1`` must occur.

    Returns:
        ``(n, d)``, row ``i`` for sample ``i``.

    Raises:
        ValueError: If an index is out of range, missing, or the shapes disagree.
    """
    if len(indices) != len(features):
        raise ValueError(f"{len(indices)} index tensors for {len(features)} feature tensors")
    if not features:
        raise ValueError("no shards to assemble")
    idx = torch.cat([i.reshape(-1).to(torch.long) for i in indices])
    feats = torch.cat(list(features))
    if feats.shape[0] != idx.shape[0]:
        raise ValueError(f"{idx.shape[0]} indices for {feats.shape[0]} feature rows")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"sample indices span {int(idx.min())}..{int(idx.max())}, expected 0..{n - 1}")
    # stable sort: for a repeated index the first occurrence comes first
    order = torch.sort(idx, stable=True).indices
    sorted_idx = idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    unique = sorted_idx[first]
    if unique.numel() != n:
        missing = sorted(set(range(n)) - set(unique.tolist()))
        raise ValueError(f"shards miss {len(missing)} of {n} samples (first missing: {missing[:5]})")
    return feats[order[first]]


class PreprocessedChunks(torch.utils.data.Dataset):
    """Chunk ``i`` of the inputs, preprocessed, with its global sample indices.

    Args:
        inputs: uint8 image tensor ``(N, H, W[, C])`` or a list of strings.
        preprocess: The backbone's ``preprocess()`` (picklable); its ``batch(chunk)`` maps a chunk to the
            backbone's input (a tensor, or a dict of tensors). Without ``batch``, images are preprocessed
            one by one and stacked.
        batch_size: Rows per chunk.
    """

    def __init__(self, inputs: Tensor | Sequence[Any], preprocess: Any, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.inputs = inputs
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.n = len(inputs)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> tuple[Tensor, Any]:
        start = i * self.batch_size
        stop = min(start + self.batch_size, self.n)
        chunk = self.inputs[start:stop]
        batch = getattr(self.preprocess, "batch", None)
        x = batch(chunk) if batch is not None else torch.stack([self.preprocess(item) for item in chunk])
        return torch.arange(start, stop), x


class FeatureExtractor(pl.LightningModule):
    """The frozen backbone as a LightningModule whose predict step returns features with their indices.

    Its ``predict_dataloader`` deals whole preprocessed chunks to the ranks with a DistributedSampler
    (no shuffling; padded with repeats when the chunks do not divide evenly, which the assembly drops
    by index). tta sets its own sampler rather than letting Lightning inject one: Lightning's predict
    sampler (``UnrepeatedDistributedSampler``) refuses a rank with no chunk, i.e. fewer chunks than ranks.

    Args:
        backbone: The frozen encoder.
        chunks: The preprocessed chunks to predict on (``None``: give the loader to ``trainer.predict``).
        num_workers: DataLoader worker processes doing the preprocessing.
    """

    def __init__(
        self, backbone: torch.nn.Module, chunks: PreprocessedChunks | None = None, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.chunks = chunks
        self.num_workers = num_workers

    def forward(self, x: Any) -> Tensor:
        """Features of a preprocessed batch."""
        return self.backbone(x)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        """The chunks of this rank (all of them with one process)."""
        if self.chunks is None:
            raise ValueError("FeatureExtractor was built without chunks: give trainer.predict a dataloader")
        sampler = None
        world = self.trainer.world_size
        if world > 1:
            sampler = torch.utils.data.DistributedSampler(
                self.chunks, num_replicas=world, rank=self.trainer.global_rank, shuffle=False, drop_last=False
            )
        return torch.utils.data.DataLoader(
            self.chunks, batch_size=None, sampler=sampler, num_workers=self.num_workers
        )

    def predict_step(self, batch: tuple[Tensor, Any], batch_idx: int = 0) -> dict[str, Tensor]:
        """``{"indices": (B,), "features": (B, d) float32}`` of one chunk."""
        indices, x = batch
        return {"indices": indices, "features": self.backbone(x).float()}


class ShardWriter(BasePredictionWriter):
    """Collects each rank's features and assembles them in index order (see the module docstring).

    Args:
        n: Number of samples.
        shard_root: Directory (seen by every rank) for the temporary shard directory; default the system
            temporary directory.
        store: Called once, on rank zero, with the assembled ``(n, d)`` features (e.g. writing a cache
            entry); with several ranks the default writes an ``assembled.safetensors`` file in the shard
            directory.
        reload: With several ranks, called on every rank after ``store`` to read the features back;
            required with ``store``.
        tag: Part of the shard directory's name (e.g. the cache key).
    """

    def __init__(
        self,
        n: int,
        shard_root: str | os.PathLike[str] | None = None,
        store: Callable[[Tensor], Any] | None = None,
        reload: Callable[[], Tensor | None] | None = None,
        tag: str = "",
    ) -> None:
        super().__init__(write_interval="batch")
        if (store is None) != (reload is None):
            raise ValueError("give both store and reload, or neither")
        self.n = n
        self.shard_root = Path(shard_root) if shard_root is not None else Path(tempfile.gettempdir())
        self.store, self.reload, self.tag = store, reload, tag
        self.shard_dir: Path | None = None
        self._indices: list[Tensor] = []
        self._features: list[Tensor] = []
        self.result: Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Reset; with several ranks, rank zero creates the shard directory and broadcasts its path."""
        self._indices, self._features, self.result = [], [], None
        if trainer.world_size <= 1:
            return
        path = None
        if trainer.is_global_zero:
            self.shard_root.mkdir(parents=True, exist_ok=True)
            prefix = f"{PARTIAL_PREFIX}{self.tag}-" if self.tag else PARTIAL_PREFIX
            path = tempfile.mkdtemp(prefix=prefix, dir=self.shard_root)
        self.shard_dir = Path(trainer.strategy.broadcast(path, src=0))

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Tensor],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep one batch's indices and features (on the CPU)."""
        self._indices.append(prediction["indices"].detach().to("cpu", torch.long))
        self._features.append(prediction["features"].detach().to("cpu", torch.float32))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Assemble (one rank), or write the shard, assemble on rank zero and read back (several)."""
        with torch.inference_mode(False):  # ordinary tensors, usable in autograd graphs later
            if trainer.world_size <= 1:
                self.result = assemble_shards(
                    [i.clone() for i in self._indices], [f.clone() for f in self._features], self.n
                )
                if self.store is not None:
                    self.store(self.result)
            else:
                self.result = self._gather(trainer)
        self._indices, self._features = [], []

    def _gather(self, trainer: pl.Trainer) -> Tensor:
        from safetensors.torch import load_file, save_file

        strategy = trainer.strategy
        assert self.shard_dir is not None
        rank, world = trainer.global_rank, trainer.world_size
        d = self._features[0].shape[1] if self._features else 0
        idx = torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.long)
        feats = torch.cat(self._features) if self._features else torch.zeros(0, d)
        shard = self.shard_dir / f"rank-{rank:05d}.safetensors"
        tmp = shard.with_suffix(".tmp")
        save_file({"indices": idx.contiguous(), "features": feats.contiguous()}, str(tmp))
        os.replace(tmp, shard)  # a shard is complete or absent
        strategy.barrier("tta-shards-written")
        error: str | None = None
        if trainer.is_global_zero:
            try:
                shards = [load_file(str(self.shard_dir / f"rank-{r:05d}.safetensors")) for r in range(world)]
                nonempty = [s for s in shards if s["indices"].numel()]
                features = assemble_shards(
                    [s["indices"] for s in nonempty], [s["features"] for s in nonempty], self.n
                )
                if self.store is not None:
                    self.store(features)
                else:
                    save_file({"features": features}, str(self.shard_dir / "assembled.safetensors"))
            except Exception as err:  # tell every rank, instead of leaving them at a barrier
                error = f"{type(err).__name__}: {err}"
        error = strategy.broadcast(error, src=0)  # also the barrier before reading
        if error is not None:
            raise RuntimeError(f"rank zero could not assemble the feature shards: {error}")
        if self.reload is not None:
            result = self.reload()
            if result is None:
                raise RuntimeError(f"the assembled features could not be read back on rank {rank}")
        else:
            result = load_file(str(self.shard_dir / "assembled.safetensors"))["features"]
        strategy.barrier("tta-assembled-read")
        if trainer.is_global_zero:
            shutil.rmtree(self.shard_dir, ignore_errors=True)
        return result


def _quiet_lightning() -> contextlib.AbstractContextManager[None]:
    """Hide Lightning's per-Trainer banner lines and the predict-with-DistributedSampler warning."""
    return quiet_lightning(
        r".*it is recommended to use `Trainer\(devices=1",
        r".*does not have many workers.*",
        r".*Couldn't infer the batch indices.*",
        r".*`trainer.predict\(\)`.*DistributedSampler.*",
        loggers=("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"),
    )


def run_extraction(
    backbone: Backbone,
    inputs: Tensor | Sequence[Any],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
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
    """Features of ``inputs`` through ``trainer.predict`` (see :func:`tta.data.extract_features`).

    Args:
        backbone: The frozen encoder.
        inputs: uint8 images ``(N, H, W[, C])`` or a list of strings.
        batch_size: Rows per forward pass.
        num_workers: DataLoader workers doing the preprocessing.
        progress: Lightning's progress bar.
        accelerator: Trainer ``accelerator``.
        devices: Trainer ``devices``.
        strategy: Trainer ``strategy`` (``"ddp"``, a Strategy instance, ...).
        num_nodes: Trainer ``num_nodes``.
        trainer_kwargs: Further Trainer arguments (override the above).
        shard_root: Where the temporary shard directory goes (shared by every rank).
        store: With several ranks, rank zero's sink of the assembled features (see :class:`ShardWriter`).
        reload: With ``store``: how every rank reads them back.
        tag: Part of the shard directory's name.

    Returns:
        float32 ``(N, d)`` on the CPU, row ``i`` for input ``i``, on every rank.
    """
    n = len(inputs)
    if n == 0:
        return torch.empty(0, int(getattr(backbone, "feature_dim", 0)))
    writer = ShardWriter(n, shard_root=shard_root, store=store, reload=reload, tag=tag)
    chunks = PreprocessedChunks(inputs, backbone.preprocess(), batch_size)
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "num_nodes": num_nodes,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": progress,
        "inference_mode": True,
        "use_distributed_sampler": False,  # FeatureExtractor.predict_dataloader shards the chunks
        **(trainer_kwargs or {}),
    }
    kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), writer]
    param = next(iter(backbone.parameters()), None)
    home = param.device if param is not None else torch.device("cpu")
    module = FeatureExtractor(backbone, chunks, num_workers=num_workers)
    with _quiet_lightning():
        trainer = pl.Trainer(**kwargs)
        started = time.perf_counter()
        trainer.predict(module, return_predictions=False)
    elapsed = time.perf_counter() - started
    backbone.to(home)  # Lightning's teardown leaves the module on the CPU
    if writer.result is None:
        raise RuntimeError("the predict pass produced no features")
    log.info(
        "extracted %d features (d=%d) in %.2f s (%.1f inputs/s) on %d process(es)",
        n,
        writer.result.shape[1],
        elapsed,
        n / max(elapsed, 1e-9),
        trainer.world_size,
    )
    return writer.result
