"""``TaskPairDataModule``: the reference and target tasks as cached, standardised features (glue)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tta.data._cache import FeatureCache
from tta.data._features import get_features
from tta.data._pair import SPLITS, FeaturePair, check_features, standardise
from tta.data._tasks import TaskSpec
from tta.errors import TTAInputError
from tta.plugins import DATASETS

__all__ = ["TaskPairDataModule", "extraction_trainer_kwargs"]

#: The dataset name of the tasks of :meth:`TaskPairDataModule.from_features` (nothing to load).
_PRECOMPUTED = "precomputed"


class _Steps(Dataset):
    """``n`` dummy items: one per optimisation step (the module samples its own batches)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _launched_externally(trainer: pl.Trainer) -> bool:
    """Whether every rank is a process started by a launcher (Lightning's script launcher, torchrun, SLURM).

    Such ranks can build a second Trainer with a DDP strategy over the same process group.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return bool(environment is not None and environment.creates_processes_externally)


def extraction_trainer_kwargs(trainer: pl.Trainer, single: bool = False) -> dict[str, Any]:
    """Trainer arguments of a feature-extraction predict pass matching a running Trainer.

    One process: its device. Several processes (DDP, torchrun, SLURM, multi-node): a DDP strategy over the
    same devices and nodes, so that every rank extracts a shard of the batches (the process group already
    exists and is reused, whatever its backend).

    Args:
        trainer: The running Trainer (e.g. of ``tta fit``).
        single: Only this rank's device, whatever the world size.

    Returns:
        ``accelerator``, ``devices``, ``strategy`` and ``num_nodes``.
    """
    device = trainer.strategy.root_device
    accelerator = "gpu" if device.type == "cuda" else device.type
    if single or trainer.world_size <= 1:
        devices: Any = [device.index] if device.type == "cuda" and device.index is not None else 1
        return {"accelerator": accelerator, "devices": devices, "strategy": "auto", "num_nodes": 1}
    # the process group exists already: the nested DDP strategy joins it (same backend, no new launch)
    parallel = getattr(trainer.strategy, "parallel_devices", None) or []
    indices = [d.index for d in parallel if d.type == "cuda" and d.index is not None]
    return {
        "accelerator": accelerator,
        "devices": indices if len(indices) == trainer.num_devices else trainer.num_devices,
        "strategy": "ddp",
        "num_nodes": trainer.num_nodes,
    }


class TaskPairDataModule(pl.LightningDataModule):
    """A reference task and a target task, as features of the model's frozen backbone.

    Features are extracted once per (backbone, weights, preprocessing, dataset, split, subset, seed) and
    cached on disk; each task is standardised with the mean and std of its own training split.

    Extraction happens when the model asks for the features (:meth:`features_for`, from its
    ``setup``), as a predict pass on the Trainer's devices: under ``--trainer.strategy ddp
    --trainer.devices N`` (or torchrun/SLURM, multi-node) every rank extracts a shard, rank zero
    assembles and writes the cache entry, and every rank loads it after a barrier (see
    :mod:`tta.modules`; for multi-node runs put the cache on a shared filesystem). Under a
    strategy that spawns its processes (``ddp_spawn``), rank zero extracts alone and broadcasts.

    Args:
        reference: The reference (source) task: dataset, class subset, per-class caps, split seed.
        target: The target task.
        cache_dir: Feature cache directory (default ``$TTA_CACHE_DIR``, else the user cache folder).
        use_cache: Read and write the feature cache.
        extract_batch_size: Images per forward pass of the backbone.
        num_workers: Data-loading workers of the feature extraction.
        eval_batch_size: Target test points per test step.
    """

    def __init__(
        self,
        reference: TaskSpec,
        target: TaskSpec,
        cache_dir: str | None = None,
        use_cache: bool = True,
        extract_batch_size: int = 64,
        num_workers: int = 0,
        eval_batch_size: int = 1024,
    ):
        super().__init__()
        for arg, value in (("extract_batch_size", extract_batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TTAInputError(f"data.{arg} must be a positive integer, got {value!r}")
        for spec in (reference, target):  # an unknown name fails now, not after minutes of extraction
            name = getattr(spec, "dataset", None)
            if isinstance(name, str) and name != _PRECOMPUTED:
                DATASETS.get(name)
        self.reference = reference
        self.target = target
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.extract_batch_size = extract_batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.features: FeaturePair | None = None
        #: Training steps of the fit (one loader item each); the model sets it in its ``setup``.
        self.train_steps = 1

    @classmethod
    def from_features(cls, features: FeaturePair, eval_batch_size: int = 1024) -> TaskPairDataModule:
        """A data module over features computed elsewhere (no backbone, no cache).

        Args:
            features: Standardised features of both tasks.
            eval_batch_size: Target test points per test step.
        """
        spec = TaskSpec(_PRECOMPUTED)
        module = cls(spec, spec, use_cache=False, eval_batch_size=eval_batch_size)
        module.features = check_features(features)
        return module

    def _cache(self) -> FeatureCache | None:
        if not self.use_cache:
            return None
        return FeatureCache(self.cache_dir) if self.cache_dir else FeatureCache()

    def load_features(self, backbone: Any, extraction: dict[str, Any] | None = None) -> FeaturePair:
        """Extract (or read from the cache) and standardise the features of both tasks.

        Args:
            backbone: The frozen encoder.
            extraction: Keyword arguments of :func:`~tta.data.get_features` for the extraction's
                predict pass (``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``progress``);
                default one device.
        """
        cache = self._cache()
        started = time.perf_counter()
        raw: dict[str, tuple[Tensor, Tensor]] = {}
        names: dict[str, list[str]] = {}
        hits: dict[str, bool] = {}
        for role, spec in (("source", self.reference), ("target", self.target)):
            for split in ("train", "test"):
                out = get_features(
                    backbone,
                    spec,
                    split,
                    cache=cache,
                    batch_size=self.extract_batch_size,
                    num_workers=self.num_workers,
                    **(extraction or {}),
                )
                raw[f"{role}_{split}"] = (out.features, out.labels)
                names[role] = list(out.class_names)
                hits[f"{role}_{split}"] = bool(out.cache_hit)
        # the raw features, before standardising spreads one NaN over a whole column
        unscaled = FeaturePair(
            source_train=raw["source_train"],
            source_test=raw["source_test"],
            target_train=raw["target_train"],
            target_test=raw["target_test"],
            source_class_names=names["source"],
            target_class_names=names["target"],
        )
        name = getattr(backbone, "name", type(backbone).__name__)
        specs = {"reference": self.reference, "target": self.target}
        where = {split: f" (backbone {name}, task {specs[role].describe()})" for split, role in SPLITS}
        check_features(unscaled, where)
        raw = {split: getattr(unscaled, split) for split, _ in SPLITS}
        s_tr, s_te = standardise(raw["source_train"][0], raw["source_test"][0])
        t_tr, t_te = standardise(raw["target_train"][0], raw["target_test"][0])
        pair = FeaturePair(
            source_train=(s_tr, raw["source_train"][1]),
            source_test=(s_te, raw["source_test"][1]),
            target_train=(t_tr, raw["target_train"][1]),
            target_test=(t_te, raw["target_test"][1]),
            source_class_names=names["source"],
            target_class_names=names["target"],
            timings={"features": time.perf_counter() - started},
            cache_hits=hits,
        )
        pair._checked = True  # type: ignore[attr-defined]
        return pair

    def features_for(self, backbone: Any) -> FeaturePair:
        """The features of both tasks through ``backbone`` (extracted once, on the Trainer's devices).

        The model calls this in its ``setup``, handing over its frozen backbone: the data module never
        reaches into the model. Under several processes, every rank extracts a shard (DDP, torchrun,
        SLURM) or rank zero extracts and broadcasts (a strategy that spawns its processes).

        Args:
            backbone: The frozen encoder, or ``None`` when the features were given
                (:meth:`from_features`).

        Raises:
            TTAInputError: If there is neither a backbone nor precomputed features.
        """
        if self.features is not None:
            if not getattr(self.features, "_checked", False):
                check_features(self.features)  # set directly, not through from_features
            return self.features
        if backbone is None:
            raise TTAInputError(
                "the model has no backbone to extract features with: give TaskTransferAnalysis a backbone, "
                "or build the data module with TaskPairDataModule.from_features(...)"
            )
        trainer = self.trainer
        assert trainer is not None
        if trainer.world_size > 1 and not _launched_externally(trainer):
            # e.g. ddp_spawn: rank zero extracts on its device, the others receive the features
            payload: Any = None
            if trainer.is_global_zero:
                try:
                    payload = self.load_features(backbone, extraction_trainer_kwargs(trainer, single=True))
                except Exception as err:  # tell the other ranks instead of leaving them waiting
                    payload = f"{type(err).__name__}: {err}"
                    trainer.strategy.broadcast(payload, src=0)
                    raise
            payload = trainer.strategy.broadcast(payload, src=0)
            if isinstance(payload, str):
                raise RuntimeError(f"feature extraction failed on rank zero: {payload}")
            self.features = payload
        else:
            extraction = extraction_trainer_kwargs(trainer)
            extraction["progress"] = trainer.progress_bar_callback is not None
            self.features = self.load_features(backbone, extraction)
        return self.features

    def setup(self, stage: str) -> None:
        if self.features is not None and not getattr(self.features, "_checked", False):
            check_features(self.features)  # set directly, not through from_features: check before any work

    def train_dataloader(self) -> DataLoader:
        steps_data = _Steps(max(self.train_steps, 1))
        return DataLoader(steps_data, batch_size=None, shuffle=False, sampler=_every_rank(steps_data))

    def test_dataloader(self) -> DataLoader:
        assert self.features is not None
        n = int(self.features.target_test[0].shape[0])
        points = torch.arange(n)
        return DataLoader(points, batch_size=self.eval_batch_size, shuffle=False, sampler=_every_rank(points))


def _every_rank(data: Dataset | Tensor) -> DistributedSampler:
    """A sampler that gives every rank every item, in order.

    Every rank holds the same features and runs every optimisation step and every test point (the
    module samples its own batches from the features), so that a DDP fit follows the single-process
    one; Lightning leaves a DistributedSampler in place instead of splitting the items across ranks.
    """
    return DistributedSampler(data, num_replicas=1, rank=0, shuffle=False)  # type: ignore[arg-type]
