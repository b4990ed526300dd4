"""Named registries of backbones, datasets, distance estimators and transferability estimators.

**Built-ins** register in-process with a decorator, and their names are reserved::

    from tta.plugins import DISTANCES

    @DISTANCES.register("exact")
    class ExactDistance(DistanceEstimator): ...

**Third parties** declare entry points in their distribution's ``pyproject.toml``; nothing of theirs is
imported until one of their names is requested::

    [project.entry-points."tta.distances"]
    sliced_wasserstein = "tta_example_plugin.distance:SlicedWassersteinDistance"

Lookups (:meth:`Registry.get`, :meth:`Registry.create`) accept

- a bare name, ``"sinkhorn"``: a built-in, else the one installed plugin declaring it;
- a qualified name, ``"tta-example-plugin:sliced_wasserstein"`` (``distribution:name``), which always
  reaches that distribution's object, and ``"tta:exact"`` for a built-in;
- a namespaced name, ``"timm/resnet50"`` (``provider/name``): the provider registered as ``timm``
  receives ``"resnet50"`` as its :attr:`provider argument <Registry.register>`, so every timm model
  is reachable without one entry per model.

Names are lowercase slugs. Two plugins declaring the same bare name make it ambiguous
(:class:`PluginAmbiguousError`, never a silent pick); a plugin declaring a built-in's name is shadowed
by it (and reachable only as ``distribution:name``). Listing (:meth:`Registry.names`,
:meth:`Registry.entries`, ``tta plugins list``) reads package metadata only; an object is imported when
first requested, checked against its group's :class:`Contract`, and cached. A broken plugin fails
alone, with a :class:`PluginLoadError` naming its distribution, version and a fix.

Environment:

- ``TTA_DISABLE_PLUGIN_AUTOLOAD=1``: built-ins only, no entry point is read.
- ``TTA_PLUGINS=dist1,dist2``: only these distributions' entry points (an allow-list).

``tta plugins list`` shows every name, ``tta plugins check`` loads and checks every plugin (exit
status 1 on any problem). See the "Writing a plugin" page of the documentation.
"""

from __future__ import annotations

from tta._registry._contract import Contract
from tta._registry._discovery import (
    PluginDistribution,
    environment_note,
    metadata_problems,
    plugin_distributions,
)
from tta._registry._env import (
    ENV_ALLOW_LIST,
    ENV_DISABLE,
    allowed_distributions,
    autoload_disabled,
    normalize_distribution,
)
from tta._registry._errors import (
    PluginAmbiguousError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    PluginTypeError,
    PluginWarning,
)
from tta._registry._groups import (
    BACKBONES,
    DATASETS,
    DISTANCES,
    ESTIMATORS,
    REGISTRIES,
    check,
    get_registry,
    refresh,
)
from tta._registry._listing import CheckResult, PluginInfo
from tta._registry._registry import Registry

__all__ = [
    "BACKBONES",
    "DATASETS",
    "DISTANCES",
    "ENV_ALLOW_LIST",
    "ENV_DISABLE",
    "ESTIMATORS",
    "REGISTRIES",
    "CheckResult",
    "Contract",
    "PluginAmbiguousError",
    "PluginDistribution",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginTypeError",
    "PluginWarning",
    "Registry",
    "allowed_distributions",
    "autoload_disabled",
    "check",
    "environment_note",
    "get_registry",
    "metadata_problems",
    "normalize_distribution",
    "plugin_distributions",
    "refresh",
]
