"""Input validation shared by the estimators: everything becomes a float64 (or int64) torch tensor.

No function here writes into its argument; a NumPy array may share memory with the returned
tensor, so callers must not modify the result in place either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as a torch tensor, without copying when it already is one.

    A NumPy array is shared when torch can view it; a view with a negative stride (``np.flip(x)``,
    ``x[::-1]``), which torch cannot represent, is copied first.
    """
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
        if any(stride < 0 for stride in arr.strides):
            arr = np.ascontiguousarray(arr)
        return torch.as_tensor(arr)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} could not be converted to a tensor: {err}") from err


def check_features(x: ArrayLike, name: str = "features", min_samples: int = 2) -> torch.Tensor:
    """A finite float64 matrix of shape ``(n, D)`` with ``n >= min_samples``."""
    t = as_tensor(x, name)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, D) matrix, got shape {tuple(t.shape)}")
    if t.shape[0] < min_samples or t.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least {min_samples} samples and 1 dimension, got shape {tuple(t.shape)}"
        )
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def check_labels(
    y: ArrayLike,
    n: int,
    name: str = "labels",
    min_classes: int = 1,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, int]:
    """Integer labels ``(n,)`` in ``[0, C)``, re-indexed onto the classes actually present.

    Returns:
        ``(labels, C)``: int64 labels in ``[0, C)`` where ``C`` counts the distinct labels (classes
        absent from the sample are dropped, the order of the others kept), and ``C``.
    """
    t = as_tensor(y, name)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integers in [0, C), got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} samples")
    if n and int(t.min()) < 0:
        raise ValueError(f"{name} must be integers in [0, C), got a negative label {int(t.min())}")
    classes, inverse = torch.unique(t.to(torch.int64), sorted=True, return_inverse=True)
    num_classes = int(classes.numel())
    if num_classes < min_classes:
        raise ValueError(f"{name} must contain at least {min_classes} classes, got {num_classes}")
    return (inverse if device is None else inverse.to(device)), num_classes


def check_probs(p: ArrayLike, name: str = "probs", atol: float = 1e-3) -> torch.Tensor:
    """Row-stochastic float64 matrix ``(n, C_s)``, renormalised exactly.

    Rows must be non-negative and sum to one within ``atol`` (softmax outputs in float32 do).
    """
    t = check_features(p, name, min_samples=1)
    if (t < 0).any():
        raise ValueError(f"{name} must be probabilities (non-negative); got a minimum of {float(t.min())}")
    sums = t.sum(dim=1)
    worst = float((sums - 1).abs().max())
    if worst > atol:
        raise ValueError(
            f"{name} rows must sum to 1 (softmax outputs, not logits); a row sums to 1 ± {worst:.3g}"
        )
    return t / sums[:, None]


def check_pool(
    features: Sequence[ArrayLike], labels: ArrayLike, estimator: str
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """A pool of at least two feature matrices sharing one label vector.

    Raises:
        ValueError: For a pool of fewer than two models (pool-relative scores are undefined there),
            or for any ill-formed member.
    """
    if isinstance(features, (torch.Tensor, np.ndarray)):
        raise ValueError(
            f"{estimator} is pool-relative: pass a list with one (n, D) feature matrix per candidate model"
        )
    pool = list(features)
    if len(pool) < 2:
        raise ValueError(
            f"{estimator} is pool-relative (min-max normalised across candidate models) and is undefined "
            f"for a pool of {len(pool)}; pass at least 2 feature matrices"
        )
    mats = [check_features(f, f"features[{m}]") for m, f in enumerate(pool)]
    n = mats[0].shape[0]
    for m, f in enumerate(mats):
        if f.shape[0] != n:
            raise ValueError(f"features[{m}] has {f.shape[0]} samples but features[0] has {n}")
    y, num_classes = check_labels(labels, n, min_classes=2, device=mats[0].device)
    return mats, y, num_classes
