"""``TaskPairDataModule``: the reference and target tasks as cached, standardised features (glue)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tta.data.cache import FeatureCache
from tta.data.features import get_features
from tta.data.tasks import TaskSpec

__all__ = ["FeaturePair", "TaskPairDataModule", "standardise"]


def standardise(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Standardise ``train`` and ``others`` with the mean and std of ``train`` (per feature).

    Constant features (std below ``eps``) are centred but not scaled.
    """
    mean = train.mean(0)
    std = train.std(0)
    std = torch.where(std < eps, torch.ones_like(std), std)
    return tuple((x - mean) / std for x in (train, *others))


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeaturePair:
    """Standardised features of both tasks (each split a ``(features (n, d), labels (n,))`` pair)."""

    source_train: tuple[Tensor, Tensor]
    source_test: tuple[Tensor, Tensor]
    target_train: tuple[Tensor, Tensor]
    target_test: tuple[Tensor, Tensor]
    source_class_names: list[str]
    target_class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        """``d``."""
        return int(self.source_train[0].shape[1])

    @property
    def num_source_classes(self) -> int:
        """``K_S``."""
        return len(self.source_class_names)

    @property
    def num_target_classes(self) -> int:
        """``K_T``."""
        return len(self.target_class_names)

    def summary(self) -> dict[str, Any]:
        """Sizes, class counts and content fingerprints of every split (for the result record)."""
        out: dict[str, Any] = {"feature_dim": self.feature_dim, "cache_hits": dict(self.cache_hits)}
        for name in ("source_train", "source_test", "target_train", "target_test"):
            z, y = getattr(self, name)
            out[name] = {"n": int(z.shape[0]), "fingerprint": _fingerprint(z, y)}
        out["num_source_classes"] = self.num_source_classes
        out["num_target_classes"] = self.num_target_classes
        out["source_classes"] = list(self.source_class_names)
        out["target_classes"] = list(self.target_class_names)
        return out


class _Steps(Dataset):
    """``n`` dummy items: one per optimisation step (the module samples its own batches)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class TaskPairDataModule(pl.LightningDataModule):
    """A reference task and a target task, as features of the model's frozen backbone.

    Features are extracted once per (backbone, weights, preprocessing, dataset, split, subset, seed) and
    cached on disk; each task is standardised with the mean and std of its own training split.

    Args:
        reference: The reference (source) task: dataset, class subset, per-class caps, split seed.
        target: The target task.
        cache_dir: Feature cache directory (default ``$TTA_CACHE_DIR`` or ``~/.cache/tta/features``).
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
        self.reference = reference
        self.target = target
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.extract_batch_size = extract_batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.features: FeaturePair | None = None

    @classmethod
    def from_features(cls, features: FeaturePair, eval_batch_size: int = 1024) -> TaskPairDataModule:
        """A data module over features computed elsewhere (no backbone, no cache).

        Args:
            features: Standardised features of both tasks.
            eval_batch_size: Target test points per test step.
        """
        spec = TaskSpec("precomputed")
        module = cls(spec, spec, use_cache=False, eval_batch_size=eval_batch_size)
        module.features = features
        return module

    def _cache(self) -> FeatureCache | None:
        if not self.use_cache:
            return None
        return FeatureCache(self.cache_dir) if self.cache_dir else FeatureCache()

    def load_features(self, backbone: Any) -> FeaturePair:
        """Extract (or read from the cache) and standardise the features of both tasks."""
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
                )
                raw[f"{role}_{split}"] = (out.features, out.labels)
                names[role] = list(out.class_names)
                hits[f"{role}_{split}"] = bool(out.cache_hit)
        s_tr, s_te = standardise(raw["source_train"][0], raw["source_test"][0])
        t_tr, t_te = standardise(raw["target_train"][0], raw["target_test"][0])
        return FeaturePair(
            source_train=(s_tr, raw["source_train"][1]),
            source_test=(s_te, raw["source_test"][1]),
            target_train=(t_tr, raw["target_train"][1]),
            target_test=(t_te, raw["target_test"][1]),
            source_class_names=names["source"],
            target_class_names=names["target"],
            timings={"features": time.perf_counter() - started},
            cache_hits=hits,
        )

    def setup(self, stage: str) -> None:
        if self.features is None:
            backbone = getattr(self.trainer.lightning_module, "backbone", None)  # type: ignore[union-attr]
            if backbone is None:
                raise ValueError(
                    "the model has no backbone to extract features with: give TaskTransferAnalysis a "
                    "backbone, "
                    "or build the data module with TaskPairDataModule.from_features(...)"
                )
            self.features = self.load_features(backbone)

    def train_dataloader(self) -> DataLoader:
        steps = int(self.trainer.lightning_module.total_steps)  # type: ignore[union-attr]
        return DataLoader(_Steps(max(steps, 1)), batch_size=None, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        assert self.features is not None
        n = int(self.features.target_test[0].shape[0])
        return DataLoader(torch.arange(n), batch_size=self.eval_batch_size, shuffle=False)
