"""EfficientNet-Lite0: kept so that ``tta.backbones.efficientnet_lite0`` imports keep working.

The implementation lives in :mod:`tta.backbones.efficientnet_lite` (EfficientNet-Lite0/1/2, one
shared class); this module re-exports the Lite0 names.
"""

from tta.backbones.efficientnet_lite import (
    EfficientNetLite0,
    default_weights_path,
    load_lukemelas_weights,
    lukemelas_order,
)

__all__ = [
    "TIMM_NAME",
    "EfficientNetLite0",
    "default_weights_path",
    "load_lukemelas_weights",
    "lukemelas_order",
]

TIMM_NAME = EfficientNetLite0.variant.timm_name
