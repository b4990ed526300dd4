"""``tta.analyze``: the whole analysis in one call, on features you already have."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from tta.data._pair import FeaturePair, check_features, standardise
from tta.data._tasks import stratified_split
from tta.errors import TTAInputError
from tta.fitting._analysis import AnalysisSettings, analyze_features
from tta.results import AnalysisResult

__all__ = ["analyze", "split_features"]

Split = tuple[Any, Any]


def _as_split(name: str, split: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise TTAInputError(f"{name} must be a (features, labels) pair, got {type(split).__name__}")
    features, labels = (torch.as_tensor(x) for x in split)
    if features.is_floating_point() and features.dtype != torch.float64:
        features = features.float()
    elif not features.is_floating_point():
        raise TTAInputError(f"{name}: features must be floating point (n, d), got dtype {features.dtype}")
    return features, labels


def split_features(
    features: Tensor, labels: Tensor, test_fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A stratified, seeded train/test split: ``test_fraction`` of each class (at least one) to test.

    Args:
        features: ``(n, d)``.
        labels: ``(n,)`` class ids.
        test_fraction: Share of each class held out, in ``(0, 1)``.
        seed: Seed of the shuffle.

    Returns:
        ``((train features, train labels), (test features, test labels))``.

    Raises:
        tta.errors.TTAInputError: For a fraction outside ``(0, 1)`` or a class with fewer than 2 samples.
    """
    if not 0.0 < test_fraction < 1.0:
        raise TTAInputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for c, n in zip(*torch.unique(labels, return_counts=True)):
        if n < 2:
            raise TTAInputError(
                f"class {int(c)} has {int(n)} sample: a train/test split needs at least 2 per class "
                "(or pass the test split yourself)"
            )
    tr, te = stratified_split(labels, test_fraction, seed)  # the split of tasks without an official one
    return (features[tr], labels[tr]), (features[te], labels[te])


def analyze(
    reference: Split,
    target: Split,
    *,
    reference_test: Split | None = None,
    target_test: Split | None = None,
    test_fraction: float = 0.25,
    variant: str = "logit",
    settings: AnalysisSettings | None = None,
    seed: int = 0,
    reference_classes: Sequence[str] | None = None,
    target_classes: Sequence[str] | None = None,
    **overrides: Any,
) -> AnalysisResult:
    r"""Bound how well a representation transfers from a reference task to a target task, in one call.

    The same analysis as ``tta fit``, on precomputed features: each task is standardised with its
    training split's mean and std, the heads and the transform are fitted, and the bound is evaluated on
    the test splits.

    Example::

        import tta
        result = tta.analyze(reference=(z_s, y_s), target=(z_t, y_t))
        print(result.bound, result.report.trivial_level, result.probe.target_ce)

    Args:
        reference: ``(features (n, d), labels (n,))`` of the reference task (tensors or arrays).
        target: ``(features (m, d), labels (m,))`` of the target task, same ``d``.
        reference_test: The reference task's test split; ``None`` holds out ``test_fraction`` of
            ``reference`` (stratified, seeded).
        target_test: The target task's test split; ``None`` likewise.
        test_fraction: Share of each class held out when a test split is not given.
        variant: The bound (docs/method.md, "Bound variants"): ``logit`` (default; non-vacuous on most
            benchmark pairs) or ``paper`` (the authors'). Ignored when ``settings`` is given.
        settings: Full settings (:class:`~tta.fitting.AnalysisSettings`); default: the defaults for
            ``variant``.
        seed: Seed of the splits, the heads and the transform.
        reference_classes: Class names of the reference task (default ``"0"``, ``"1"``...).
        target_classes: Class names of the target task.
        **overrides: Fields of the settings to replace, e.g. ``transform=TransformConfig(steps=50)`` or
            ``eval_distance="exact"``.

    Returns:
        The :class:`~tta.results.AnalysisResult`: ``bound``, ``report`` (every term, the trivial level,
        the variant), the probes' target losses.

    Raises:
        tta.errors.TTAInputError: For malformed features or labels (one line naming the split).
    """
    base = settings if settings is not None else AnalysisSettings().with_variant(variant)
    try:
        chosen = replace(base, **overrides) if overrides else base
    except TypeError as err:
        raise TTAInputError(f"analyze: {err}") from None
    splits: dict[str, tuple[Tensor, Tensor]] = {}
    for role, train, test in (("source", reference, reference_test), ("target", target, target_test)):
        name = "reference" if role == "source" else "target"
        tr = _as_split(name, train)
        te = _as_split(f"{name}_test", test) if test is not None else None
        if te is None:
            tr, te = split_features(*tr, test_fraction=test_fraction, seed=seed)
        splits[f"{role}_train"], splits[f"{role}_test"] = tr, te

    def names(given: Sequence[str] | None, role: str) -> list[str]:
        if given is not None:
            return [str(c) for c in given]
        labels = torch.cat([splits[f"{role}_train"][1], splits[f"{role}_test"][1]])
        top = int(labels.max()) + 1 if labels.numel() and not labels.is_floating_point() else 0
        return [str(i) for i in range(max(top, 0))]

    raw = FeaturePair(
        source_train=splits["source_train"],
        source_test=splits["source_test"],
        target_train=splits["target_train"],
        target_test=splits["target_test"],
        source_class_names=names(reference_classes, "source"),
        target_class_names=names(target_classes, "target"),
    )
    raw = check_features(raw)
    s_tr, s_te = standardise(raw.source_train[0], raw.source_test[0])
    t_tr, t_te = standardise(raw.target_train[0], raw.target_test[0])
    pair = replace(
        raw,
        source_train=(s_tr, raw.source_train[1]),
        source_test=(s_te, raw.source_test[1]),
        target_train=(t_tr, raw.target_train[1]),
        target_test=(t_te, raw.target_test[1]),
    )
    return analyze_features(pair, chosen, seed)[1]
