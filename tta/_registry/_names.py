"""The name grammar: ``[distribution:]name[/provider-argument]``, and the ambiguity message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tta._registry._discovery import _Entry
from tta._registry._env import BUILTIN_SOURCES, ENV_ALLOW_LIST, normalize_distribution
from tta._registry._errors import PluginNotFoundError

if TYPE_CHECKING:
    from tta._registry._registry import Registry


def _ambiguity_message(registry: Registry[Any], key: str, dists: dict[str, list[_Entry]]) -> str:
    lines = "; ".join(
        f"'{entries[0].dist}'{' ' + entries[0].version if entries[0].version else ''} ({entries[0].value})"
        for _, entries in sorted(dists.items())
    )
    choices = " or ".join(f"'{d}:{key}'" for d in sorted(dists))
    return (
        f"{registry.kind} {key!r} of group '{registry.group}' is ambiguous: it is declared by {len(dists)} "
        f"installed distributions: {lines}. Write {choices} to choose one (or uninstall one, or set "
        f"{ENV_ALLOW_LIST} to the plugins you use)."
    )


def _parse(name: str, registry: Registry[Any] | None = None) -> tuple[str | None, str, str | None]:
    """Split ``[distribution:]name[/sub-name]`` into its canonical parts."""
    text = name.strip()
    dist: str | None = None
    colon, slash = text.find(":"), text.find("/")
    if colon != -1 and (slash == -1 or colon < slash):
        dist, text = normalize_distribution(text[:colon]), text[colon + 1 :].strip()
        if dist in BUILTIN_SOURCES:
            dist = "tta"
    sub: str | None = None
    if "/" in text:
        text, sub = text.split("/", 1)
        sub = sub.strip()
    key = text.strip().lower()
    if not key or (sub is not None and not sub) or (dist is not None and not dist):
        kind = registry.kind if registry else "plugin"
        raise PluginNotFoundError(
            f"{name!r} is not a valid {kind} name: write 'name', 'distribution:name' or 'provider/name'"
        )
    return dist, key, sub
