"""Environment controls of plugin discovery and distribution-name canonicalisation."""

from __future__ import annotations

import os
import re

ENV_DISABLE = "TTA_DISABLE_PLUGIN_AUTOLOAD"
"""Environment variable: a true value (``1``, ``true``, ``yes``, ``on``) disables third-party plugins."""

ENV_ALLOW_LIST = "TTA_PLUGINS"
"""Environment variable: comma-separated distribution names whose plugins are enabled (all if unset)."""

#: Names that qualify a built-in: ``tta:exact``.
BUILTIN_SOURCES = ("tta", "task-transfer-analysis")
_OWN_DISTRIBUTION = "task-transfer-analysis"
_TRUE = ("1", "true", "yes", "on")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


def normalize_distribution(name: str) -> str:
    """A distribution name in its canonical form (PEP 503): lowercase, runs of ``-_.`` as ``-``.

    Args:
        name: A distribution name as written (``"TTA_Example.Plugin"``).

    Returns:
        The canonical name (``"tta-example-plugin"``).
    """
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def autoload_disabled() -> bool:
    """Whether ``TTA_DISABLE_PLUGIN_AUTOLOAD`` disables third-party plugins (read at every lookup)."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in _TRUE


def allowed_distributions() -> frozenset[str] | None:
    """The canonical distribution names allowed by ``TTA_PLUGINS``, or ``None`` when it is unset/empty."""
    raw = os.environ.get(ENV_ALLOW_LIST, "")
    names = frozenset(normalize_distribution(n) for n in raw.split(",") if n.strip())
    return names or None
