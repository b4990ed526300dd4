"""``FeaturePair``: the standardised features of a (reference, target) task pair, and their checks.

Plain data, no Lightning: the hand-off from feature extraction (or the user's own tensors) to the fit
engine. :class:`tta.modules.TaskPairDataModule` builds one from two tasks and a backbone;
:func:`tta.analyze` from tensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tta.errors import TTAInputError

__all__ = ["SPLITS", "FeaturePair", "check_features", "check_split", "standardise"]

#: The splits of a :class:`FeaturePair`, with the role of their task.
SPLITS = (
    ("source_train", "reference"),
    ("source_test", "reference"),
    ("target_train", "target"),
    ("target_test", "target"),
)

#: Labels are class ids: any integer dtype is accepted (and stored as int64), floats and bools are not.
_INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _first_rows(mask: Tensor, limit: int = 5) -> str:
    rows = torch.nonzero(mask).flatten()[:limit].tolist()
    return ", ".join(map(str, rows)) + (", …" if int(mask.sum()) > limit else "")


def check_split(
    name: str, split: Any, class_names: list[str], where: str = "", fix_empty: str = ""
) -> tuple[Tensor, Tensor]:
    """Check one ``(features (n, d), labels (n,))`` split of a task; return it with int64 labels.

    Args:
        name: The split, for the messages (``"target_train"``).
        split: ``(features, labels)``.
        class_names: The task's classes: labels must be ``0..len(class_names)-1``, each present.
        where: Where the data came from, appended to the messages (``" (backbone ..., task ...)"``).
        fix_empty: How to fix an empty class, for the message (default: a generic hint).

    Returns:
        ``(features, labels)``: features as float32 (what the analysis computes in), labels as int64.

    Raises:
        TTAInputError: On missing labels, a shape, dtype or length mismatch, NaN/Inf features, a label out
            of ``0..K-1`` (negative, too large, or not a whole number) or a class without samples; the
            message names the split, the rows and the fix.
    """
    k = len(class_names)
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise TTAInputError(
            f"{name}{where}: expected a (features, labels) pair, got {type(split).__name__}"
            + (f" of length {len(split)}" if isinstance(split, (tuple, list)) else "")
        )
    z, y = split
    if y is None:
        raise TTAInputError(
            f"{name}{where}: labels are missing; give an int64 tensor (n,) of class ids 0..{k - 1} "
            "(for a target without labels, rank with `tta rank --label-free`)"
        )
    if not isinstance(z, Tensor):
        z = torch.as_tensor(z)
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if z.ndim != 2 or not z.is_floating_point():
        raise TTAInputError(
            f"{name}{where}: features must be a float tensor (n, d), got {z.dtype} {tuple(z.shape)}"
        )
    n = int(z.shape[0])
    if y.ndim != 1 or int(y.shape[0]) != n:
        raise TTAInputError(
            f"{name}{where}: labels must have shape ({n},) (one per feature row), got {tuple(y.shape)}"
        )
    if n == 0:
        raise TTAInputError(f"{name}{where}: the split is empty; every split needs samples of every class")
    bad = ~torch.isfinite(z)
    if bool(bad.any()):
        rows = bad.any(1)
        raise TTAInputError(
            f"{name}{where}: features contain {int(bad.sum())} NaN/Inf values in {int(rows.sum())} of {n} "
            f"rows (rows {_first_rows(rows)}); fix the inputs that produce them (or drop those rows) "
            "before the analysis"
        )
    if y.dtype not in _INTEGER_DTYPES:
        whole = y.is_floating_point() and bool(torch.isfinite(y).all()) and bool((y == y.round()).all())
        hint = " (they are whole numbers: convert them with labels.long())" if whole else ""
        raise TTAInputError(
            f"{name}{where}: labels must be integer class ids 0..{k - 1}, got dtype {y.dtype}{hint}"
        )
    z, y = z.to(torch.float32), y.to(torch.int64)
    out_of_range = (y < 0) | (y >= k)
    if bool(out_of_range.any()):
        lo, hi = int(y.min()), int(y.max())
        shown = ", ".join(class_names[:10]) + (", …" if k > 10 else "")
        raise TTAInputError(
            f"{name}{where}: labels span {lo}..{hi} but the task has {k} classes ({shown}), so labels must "
            f"be 0..{k - 1} (rows {_first_rows(out_of_range)}); "
            "remap the labels to 0..K-1 or give one class name per class"
        )
    counts = torch.bincount(y, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        named = ", ".join(f"{c} ({class_names[c]!r})" for c in empty[:5]) + (", …" if len(empty) > 5 else "")
        fix = fix_empty or "drop the class, or give it samples in this split"
        lead = f"{n} samples for {k} classes: " if n < k else ""
        raise TTAInputError(
            f"{name}{where}: {lead}class{'es' if len(empty) > 1 else ''} {named} "
            f"{'have' if len(empty) > 1 else 'has'} no samples; every class needs at least one sample in "
            f"every split: {fix}"
        )
    return z, y


def check_features(pair: FeaturePair, where: dict[str, str] | None = None) -> FeaturePair:
    """Check every split of a :class:`FeaturePair` before any work starts.

    In place: features become float32 (what the analysis computes in), labels int64. Both tasks need at
    least 2 classes; each split passes :func:`check_split`; both tasks must have features of one
    dimension ``d``. A target may have more classes than the reference, or far fewer.

    Args:
        pair: The features.
        where: Per split name, where it came from, appended to the messages; given (by
            :meth:`TaskPairDataModule.load_features`), the fixes name the config keys (``data.target...``).

    Returns:
        ``pair``.

    Raises:
        TTAInputError: With the split, what is wrong and how to fix it.
    """
    config = where is not None
    where = where or {}
    names = {"reference": list(pair.source_class_names), "target": list(pair.target_class_names)}
    for role in ("reference", "target"):
        if len(names[role]) < 2:
            shown = ", ".join(map(repr, names[role])) or "none"
            raise TTAInputError(
                f"the {role} task has {len(names[role])} class{'es' if not names[role] else ''} ({shown}); "
                f"the analysis needs at least 2 {role} classes (with one there is nothing to predict): add "
                + (f"classes (data.{role}.classes)" if config else f"classes to the {role} features")
            )
    dims: dict[str, int] = {}
    for split, role in SPLITS:
        side = split.rsplit("_", 1)[1]
        fix = (
            f"drop the class from data.{role}.classes, or give it samples (data.{role}.{side}_per_class, "
            f"data.{role}.test_fraction)"
            if config
            else f"drop the class (and its name from {'source' if role == 'reference' else 'target'}"
            "_class_names, relabelling the others), or add samples of it to this split"
        )
        z, y = check_split(split, getattr(pair, split), names[role], where.get(split, ""), fix)
        setattr(pair, split, (z, y))
        dims[split] = int(z.shape[1])
    if len(set(dims.values())) > 1:
        shown = ", ".join(f"{k} d={v}" for k, v in dims.items())
        raise TTAInputError(
            f"feature dimension mismatch: {shown}; the reference and target features must come from the "
            "same backbone (same d): extract both with one backbone"
        )
    pair._checked = True  # type: ignore[attr-defined]
    return pair


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
