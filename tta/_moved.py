"""Old module paths of tta, kept importable: each is an alias of the private module that replaced it.

Before 0.1 the implementation modules were public (``tta.data.datamodule``, ``tta.backbones.base``...).
They are private now and their names are re-exported by their packages; importing an old path still
works, returns the new module and warns once with a :class:`DeprecationWarning` naming the package to
import from. Installed by ``import tta`` (a finder at the end of :data:`sys.meta_path`, consulted only for
these names).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

__all__ = ["MOVED", "install"]

#: Old module path -> (new private module, the public package to import from).
MOVED: dict[str, tuple[str, str]] = {
    **{f"tta.backbones.{m}": (f"tta.backbones._{m}", "tta.backbones")
       for m in ("base", "efficientnet_lite", "minilm", "small_cnn", "timm_backbone")},
    "tta.backbones.efficientnet_lite0": ("tta.backbones._efficientnet_lite", "tta.backbones"),
    **{f"tta.benchmark.{m}": (f"tta.benchmark._{m}", "tta.benchmark")
       for m in ("config", "external", "labelfree", "metrics", "rank", "report", "runner")},
    **{f"tta.data.{m}": (f"tta.data._{m}", "tta.data")
       for m in ("cache", "datasets", "features", "shifts", "tasks", "text", "torchvision_sets")},
    "tta.data.datamodule": ("tta.modules._datamodule", "tta.modules"),
    "tta.data.extraction": ("tta.modules._extraction", "tta.modules"),
    **{f"tta.estimators.{m}": (f"tta.estimators._{m}", "tta.estimators")
       for m in ("base", "gbc", "hscore", "knn", "leep", "logme", "nce", "otce", "pool", "sfda",
                 "static", "transrate")},
    **{f"tta.modules.{m}": (f"tta.modules._{m}", "tta.modules")
       for m in ("analysis", "backbone_training", "figures", "interrupt", "probe")},
}  # fmt: skip


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str, package: str) -> None:
        self.new, self.package = new, package

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} is a private module now; import its names from {self.package}",
            DeprecationWarning,
            stacklevel=2,
        )
        sys.modules[module.__name__] = importlib.import_module(self.new)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        new, package = MOVED[fullname]
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new, package))


def install() -> None:
    """Add the alias finder to :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
