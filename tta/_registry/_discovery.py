"""Reading installed entry points from package metadata (nothing imported), once, thread-safe."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tta._registry._env import (
    _OWN_DISTRIBUTION,
    ENV_ALLOW_LIST,
    ENV_DISABLE,
    allowed_distributions,
    autoload_disabled,
    normalize_distribution,
)


@dataclass(frozen=True)
class _Entry:
    """One installed entry point of a tta group, as read from its distribution's metadata."""

    group: str
    name: str
    value: str
    dist: str
    dist_key: str
    version: str | None
    ep: Any

    @property
    def key(self) -> str:
        return self.name.strip().lower()

    @property
    def qualified_name(self) -> str:
        return f"{self.dist_key}:{self.key}"

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"distribution '{self.dist}'{version} (entry point '{self.name} = {self.value}')"


@dataclass(frozen=True)
class _Discovery:
    entries: tuple[_Entry, ...]
    problems: tuple[str, ...]


_LOCK = threading.RLock()
_DISCOVERY: _Discovery | None = None


def _installed_entry_points() -> tuple[list[Any], list[str]]:
    """Entry points of the tta groups in the installed distributions (metadata only, nothing imported).

    Returns:
        The entry points, and one message per distribution whose metadata could not be read.
    """
    from importlib import metadata

    from tta._registry._groups import REGISTRIES  # the groups are defined over this module

    groups = [r.group for r in REGISTRIES.values()]
    try:
        eps = metadata.entry_points()
        return [ep for group in groups for ep in eps.select(group=group)], []
    except Exception:  # a distribution with unreadable metadata: read them one by one
        pass
    found: list[Any] = []
    problems: list[str] = []
    seen: set[str] = set()
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"] or "<unnamed>"
        except Exception as err:
            problems.append(
                f"a distribution at {getattr(dist, '_path', '?')} has unreadable metadata: {err!r}"
            )
            continue
        if normalize_distribution(name) in seen:  # the first one on sys.path wins, as in importlib
            continue
        seen.add(normalize_distribution(name))
        try:
            found.extend(ep for ep in dist.entry_points if ep.group in groups)
        except Exception as err:
            problems.append(
                f"distribution '{name}' has unreadable entry points ({err!r}); reinstall it "
                f"(`pip install --force-reinstall {name}`)"
            )
    return found, problems


def _entry_from(ep: Any) -> _Entry:
    dist = getattr(ep, "dist", None)
    name: str | None = None
    version: str | None = None
    if dist is not None:
        try:
            name = dist.name if hasattr(dist, "name") else dist.metadata["Name"]
        except Exception:  # pragma: no cover - unreadable METADATA: keep the entry point usable
            name = None
        try:
            version = dist.version
        except Exception:  # pragma: no cover
            version = None
    name = name or "<unknown distribution>"
    return _Entry(ep.group, ep.name, ep.value, name, normalize_distribution(name), version, ep)


def _discover() -> _Discovery:
    """Installed entry points of every group, read once per process (see :func:`refresh`)."""
    global _DISCOVERY
    with _LOCK:
        if _DISCOVERY is None:
            eps, problems = _installed_entry_points()
            entries: list[_Entry] = []
            seen: set[tuple[str, str, str, str]] = set()
            for ep in eps:
                entry = _entry_from(ep)
                ident = (entry.group, entry.dist_key, entry.name, entry.value)
                if entry.dist_key == _OWN_DISTRIBUTION or ident in seen:  # built-ins register in-process
                    continue
                seen.add(ident)
                entries.append(entry)
            _DISCOVERY = _Discovery(tuple(entries), tuple(problems))
        return _DISCOVERY


def forget() -> None:
    """Drop the discovered entry points (the next lookup reads the metadata again)."""
    global _DISCOVERY
    with _LOCK:
        _DISCOVERY = None


def _env_filter(entries: Iterable[_Entry]) -> list[_Entry]:
    if autoload_disabled():
        return []
    allow = allowed_distributions()
    return [e for e in entries if allow is None or e.dist_key in allow]


def environment_note() -> str:
    """Why some plugins are hidden (the environment controls in effect), or an empty string."""
    if autoload_disabled():
        return f"third-party plugins are disabled ({ENV_DISABLE}={os.environ.get(ENV_DISABLE)})"
    allow = allowed_distributions()
    if allow is not None:
        return f"only the plugins of {', '.join(sorted(allow))} are enabled ({ENV_ALLOW_LIST})"
    return ""


def metadata_problems() -> list[str]:
    """Problems met while reading installed metadata (unreadable distributions), for ``tta plugins check``."""
    return list(_discover().problems)


@dataclass(frozen=True)
class PluginDistribution:
    """An installed distribution declaring tta entry points.

    Args:
        name: Its name as in its metadata.
        version: Its version.
        groups: The tta groups it declares entry points in.
        enabled: Whether the environment (``TTA_DISABLE_PLUGIN_AUTOLOAD``, ``TTA_PLUGINS``) enables it.
    """

    name: str
    version: str | None
    groups: tuple[str, ...]
    enabled: bool


def plugin_distributions() -> list[PluginDistribution]:
    """Installed distributions declaring tta entry points (metadata only), sorted by name."""
    enabled = {e.dist_key for e in _env_filter(_discover().entries)}
    by_dist: dict[str, list[_Entry]] = {}
    for entry in _discover().entries:
        by_dist.setdefault(entry.dist_key, []).append(entry)
    return [
        PluginDistribution(
            name=items[0].dist,
            version=items[0].version,
            groups=tuple(sorted({e.group for e in items})),
            enabled=key in enabled,
        )
        for key, items in sorted(by_dist.items())
    ]
