"""Named registries for backbones, datasets, distance estimators and transferability estimators.

Built-in objects register in-process with a decorator::

    from tta.plugins import DISTANCES

    @DISTANCES.register("exact")
    class ExactDistance(DistanceEstimator): ...

and are looked up by name, ``DISTANCES.get("exact")``, or created with keyword arguments,
``DISTANCES.create("exact", max_iter=10**6)`` (``None`` keyword values are dropped, as in timm).

Looking a name up that is not registered raises :class:`PluginNotFoundError`, whose message lists
close matches and the command that lists everything (``tta plugins list``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = [
    "BACKBONES",
    "DATASETS",
    "DISTANCES",
    "ESTIMATORS",
    "PluginError",
    "PluginNotFoundError",
    "Registry",
]

T = TypeVar("T")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class PluginError(LookupError):
    """Base class of every registry error."""


class PluginNotFoundError(PluginError, KeyError):
    """A name was looked up that no registered object carries."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A group of named objects (classes or factory functions).

    Args:
        group: The group's name, also its entry-point group (``tta.backbones``...).
        kind: What the objects are, in words, for error messages ("backbone").
    """

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._objects: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering a class or factory under ``name`` (default: its lowercased name).

        Args:
            name: A lowercase slug (letters, digits, ``_``, ``-``, ``.``).

        Returns:
            The decorator, which returns the object unchanged.
        """

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", "").lower()
            if not _SLUG.match(key):
                raise ValueError(
                    f"{self.kind} name {key!r} is not a lowercase slug: use letters, digits, '_', '-' or '.'"
                )
            if key in self._objects and self._objects[key] is not obj:
                raise ValueError(f"{self.kind} name {key!r} is already registered in {self.group}")
            self._objects[key] = obj
            return obj

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard pattern."""
        return sorted(n for n in self._objects if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            PluginNotFoundError: With close-match suggestions when ``name`` is unknown.
        """
        key = name.strip().lower()
        if key in self._objects:
            return self._objects[key]
        close = difflib.get_close_matches(key, list(self._objects), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PluginNotFoundError(
            f"Unknown {self.kind} {name!r} in group '{self.group}'.{hint} "
            f"Known: {', '.join(self.names()) or '(none)'}. Run `tta plugins list` to see every name."
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the object registered under ``name`` with ``kwargs`` (``None`` values dropped)."""
        factory = self.get(name)
        return factory(**{k: v for k, v in kwargs.items() if v is not None})  # type: ignore[operator]


BACKBONES: Registry[Any] = Registry("tta.backbones", "backbone")
DATASETS: Registry[Any] = Registry("tta.datasets", "dataset")
DISTANCES: Registry[Any] = Registry("tta.distances", "distance estimator")
ESTIMATORS: Registry[Any] = Registry("tta.estimators", "transferability estimator")
