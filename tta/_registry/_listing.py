"""What listing and checking report: PluginInfo, CheckResult."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

from tta._registry._env import normalize_distribution


@dataclass(frozen=True)
class PluginInfo:
    """One name of a registry, as ``tta plugins list`` shows it (read without importing any plugin).

    Args:
        group: The entry-point group (``tta.distances``).
        name: The name as declared.
        source: ``"tta"`` for a built-in, else the distribution's name.
        version: The distribution's version (``None`` for built-ins).
        target: ``module:attribute`` of the object.
        builtin: Whether it is registered in-process.
        status: ``"ok"``, ``"ambiguous"`` (another plugin declares the name), ``"shadowed"`` (a built-in
            has the name), ``"duplicate"`` (declared twice by one distribution with different targets)
            or ``"invalid-name"`` (not a lowercase slug).
        problem: What is wrong and how to fix it, or ``None``.
        provider_arg: For a provider, the keyword receiving ``<name>`` of ``provider/<name>`` (known
            without importing for built-ins only).
    """

    group: str
    name: str
    source: str
    version: str | None
    target: str
    builtin: bool
    status: str = "ok"
    problem: str | None = None
    provider_arg: str | None = None

    @property
    def qualified_name(self) -> str:
        """``distribution:name`` (``tta:name`` for a built-in); always resolves to this object."""
        return f"{'tta' if self.builtin else normalize_distribution(self.source)}:{self.name.lower()}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, with ``qualified_name``."""
        return {**asdict(self), "qualified_name": self.qualified_name}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of loading and checking one registry name (see :func:`check`).

    Args:
        info: The listed entry.
        ok: Whether it loads, has the right type and conflicts with nothing.
        message: The problem (``None`` when ``ok``).
        loaded: Description of the loaded object (``"class tta_x.Foo"``), or ``None`` if it failed.
        provider_arg: The provider argument found on the loaded object, if any.
    """

    info: PluginInfo
    ok: bool
    message: str | None = None
    loaded: str | None = None
    provider_arg: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            **self.info.as_dict(),
            "ok": self.ok,
            "message": self.message,
            "loaded": self.loaded,
            "provider_arg": self.provider_arg or self.info.provider_arg,
        }


def _target_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(obj)


def _describe_object(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{type(obj).__name__} {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    text = repr(obj)
    return f"{type(obj).__name__} instance {text[:60] + '...' if len(text) > 60 else text}"
