r"""The static ranker: a model's ImageNet top-1 accuracy, ignoring the target task [1]_.

It is the sanity floor every transferability estimator must beat: "better ImageNet models transfer
better" holds on average [1]_, so an estimator that looks at the target data has to rank models
better than their ImageNet accuracy does.

References:
    .. [1] S. Kornblith, J. Shlens, Q. V. Le. "Do Better ImageNet Models Transfer Better?".
       CVPR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tta.estimators._base import register_estimator

__all__ = ["static"]


@register_estimator("static", inputs="metadata", higher_is_better=True, complexity="O(1)")
def static(metadata: Mapping[str, Any] | float, *, key: str = "imagenet_top1") -> float:
    r"""The backbone's ImageNet top-1 accuracy, whatever the target.

    .. math::
        \mathrm{static}(m) = \mathrm{top1}_{\mathrm{ImageNet}}(m).

    Cost: :math:`O(1)`.

    Args:
        metadata: The model's metadata, a mapping holding ``key``, or the accuracy itself.
        key: Metadata entry holding the accuracy (any scale, e.g. percent, used as given).

    Returns:
        The accuracy. Higher is better.

    Raises:
        ValueError: When the accuracy is missing, not a number, or not finite.
    """
    if isinstance(metadata, Mapping):
        if key not in metadata:
            raise ValueError(f"metadata has no {key!r} entry (keys: {sorted(map(str, metadata))})")
        value = metadata[key]
    else:
        value = metadata
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        top1 = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key} must be a number, got {value!r}") from err
    if not math.isfinite(top1):
        raise ValueError(f"{key} must be finite, got {top1}")
    return top1
