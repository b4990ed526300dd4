"""tta's four registries (backbones, datasets, distances, estimators), group lookup, check, refresh."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from tta._registry._contract import Contract
from tta._registry._discovery import _LOCK, forget
from tta._registry._env import normalize_distribution
from tta._registry._errors import PluginNotFoundError
from tta._registry._listing import CheckResult
from tta._registry._registry import Registry

BACKBONES: Registry[Any] = Registry(
    "tta.backbones",
    "backbone",
    Contract(
        "tta.backbones:Backbone",
        "factory",
        "a tta.backbones.Backbone subclass, or a callable returning a tta.backbones.Backbone",
    ),
    builtin_modules=("tta.backbones",),
    providers={"timm": "model_name"},
)
DATASETS: Registry[Any] = Registry(
    "tta.datasets",
    "dataset",
    Contract(
        "tta.data:ImageDataset",
        "factory",
        "a callable returning a tta.data.ImageDataset (or a LazyImageDataset / TextDataset); an official "
        "train/test split is declared by a `splits` attribute and a `split` argument",
    ),
    builtin_modules=("tta.data._datasets", "tta.data._torchvision_sets", "tta.data._text"),
)
DISTANCES: Registry[Any] = Registry(
    "tta.distances",
    "distance estimator",
    Contract(
        "tta.distances:DistanceEstimator",
        "factory",
        "a concrete tta.distances.DistanceEstimator subclass, or a callable returning a DistanceEstimator",
    ),
    builtin_modules=("tta.distances",),
)
ESTIMATORS: Registry[Any] = Registry(
    "tta.estimators",
    "transferability estimator",
    Contract(
        "tta.estimators:Estimator",
        "instance",
        "a tta.estimators.Estimator descriptor (name, fn, inputs, higher_is_better, complexity)",
    ),
    builtin_modules=("tta.estimators",),
)

#: Every registry by its short group name.
REGISTRIES: dict[str, Registry[Any]] = {
    "backbones": BACKBONES,
    "datasets": DATASETS,
    "distances": DISTANCES,
    "estimators": ESTIMATORS,
}


def get_registry(group: str) -> Registry[Any]:
    """The registry of a group, by short (``distances``) or full (``tta.distances``) name.

    Raises:
        PluginNotFoundError: For an unknown group.
    """
    key = group.strip().lower().removeprefix("tta.")
    if key not in REGISTRIES and f"{key}s" in REGISTRIES:  # "distance" for "distances"
        key = f"{key}s"
    if key not in REGISTRIES:
        close = difflib.get_close_matches(key, list(REGISTRIES), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginNotFoundError(f"Unknown plugin group {group!r}.{hint} Groups: {', '.join(REGISTRIES)}.")
    return REGISTRIES[key]


def check(groups: Iterable[str] | None = None, distribution: str | None = None) -> list[CheckResult]:
    """Load every built-in and enabled plugin object and check it against its group's contract.

    Args:
        groups: Groups to check (short or full names); default: all.
        distribution: Only this distribution's plugins (conflicts with others are still found).

    Returns:
        One result per name; ``ok`` is false for load failures, wrong types and conflicts
        (ambiguous, shadowed, duplicate or invalid names).
    """
    registries = [get_registry(g) for g in groups] if groups else list(REGISTRIES.values())
    results = [r for registry in registries for r in registry.check()]
    if distribution is not None:
        key = normalize_distribution(distribution)
        results = [r for r in results if normalize_distribution(r.info.source) == key]
    return results


def refresh() -> None:
    """Forget the discovered entry points and the loaded plugin objects (e.g. after ``pip install``)."""
    with _LOCK:
        forget()
        for registry in REGISTRIES.values():
            registry._loaded.clear()
            registry._warned.clear()
