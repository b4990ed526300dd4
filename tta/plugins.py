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

import difflib
import fnmatch
import functools
import importlib
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Generic, Literal, TypeVar

from tta.errors import TTAError

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

T = TypeVar("T")

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


# ---------------------------------------------------------------------------------------------- errors
class PluginError(TTAError, LookupError):
    """Base class of every registry error.

    A :class:`~tta.errors.TTAError`: the ``tta`` command prints its message as one line, without a traceback.
    """


class PluginNotFoundError(PluginError, KeyError):
    """A name was looked up that no registered object carries."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginAmbiguousError(PluginError):
    """A bare name is declared by several plugins: it must be written ``distribution:name``."""


class PluginLoadError(PluginError):
    """A plugin's entry point failed to import; the original exception is chained (``__cause__``)."""


class PluginTypeError(PluginError, TypeError):
    """A plugin object (or what its factory returned) does not fulfil its group's contract."""


class PluginWarning(UserWarning):
    """A plugin configuration problem that does not stop the lookup (a shadowed name)."""


# ---------------------------------------------------------------------------------------------- contracts
@dataclass(frozen=True)
class Contract:
    """What the objects of a group must be.

    Args:
        expected: Import path ``"module:Class"`` of the type the group is about (resolved lazily).
        form: ``"factory"``: the object is a subclass of ``expected`` or a callable returning an
            instance of it (checked on every call); ``"instance"``: the object is an instance of it.
        description: The contract in words, for error messages and ``tta plugins list``.
    """

    expected: str
    form: Literal["factory", "instance"]
    description: str

    @property
    def expected_name(self) -> str:
        """The public dotted name of the expected type, e.g. ``tta.distances.DistanceEstimator``."""
        module, _, attr = self.expected.partition(":")
        public = module.rsplit(".", 1)[0] if module.count(".") >= 2 else module
        return f"{public}.{attr}"

    def expected_type(self) -> type:
        """Import and return the expected type."""
        module, _, attr = self.expected.partition(":")
        return getattr(importlib.import_module(module), attr)


# ---------------------------------------------------------------------------------------------- discovery
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


def refresh() -> None:
    """Forget the discovered entry points and the loaded plugin objects (e.g. after ``pip install``)."""
    global _DISCOVERY
    with _LOCK:
        _DISCOVERY = None
        for registry in REGISTRIES.values():
            registry._loaded.clear()
            registry._warned.clear()


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


# ---------------------------------------------------------------------------------------------- listing
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


# ---------------------------------------------------------------------------------------------- registry
class _CheckedFactory:
    """A third-party factory whose every result is checked against its group's contract."""

    def __init__(self, fn: Callable[..., Any], registry: Registry[Any], entry: _Entry) -> None:
        functools.update_wrapper(self, fn)  # keeps __doc__, __wrapped__ (signature) and attributes (splits)
        self._registry = registry
        self._entry = entry

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._registry._check_result(self.__wrapped__(*args, **kwargs), self._entry)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<checked {self._registry.kind} factory {_target_of(self.__wrapped__)}>"  # type: ignore[attr-defined]


class Registry(Generic[T]):
    """A group of named objects (classes or factory functions): built-ins plus installed plugins.

    Args:
        group: The group's name, also its entry-point group (``tta.backbones``...).
        kind: What the objects are, in words, for error messages ("backbone").
        contract: What a plugin's object must be (checked when it is first loaded).
        builtin_modules: Modules registering the built-ins, imported before the first lookup.
        providers: Built-in providers and the keyword receiving ``<name>`` of ``provider/<name>``.
    """

    def __init__(
        self,
        group: str,
        kind: str,
        contract: Contract | None = None,
        builtin_modules: tuple[str, ...] = (),
        providers: dict[str, str] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self.contract = contract
        self.builtin_modules = builtin_modules
        self._objects: dict[str, T] = {}
        self._providers: dict[str, str] = dict(providers or {})
        self._loaded: dict[tuple[str, str, str], Any] = {}
        self._warned: set[str] = set()
        self._builtins_imported = False

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, kind={self.kind!r})"

    @property
    def short_group(self) -> str:
        """The group without its ``tta.`` prefix (``distances``)."""
        return self.group.split(".", 1)[-1]

    # ------------------------------------------------------------------ built-ins
    def register(self, name: str | None = None, *, provider_arg: str | None = None) -> Callable[[T], T]:
        """Decorator registering a class or factory under ``name`` (default: its lowercased name).

        Args:
            name: A lowercase slug (letters, digits, ``_``, ``-``, ``.``).
            provider_arg: Make it a provider: ``"<name>/<sub>"`` calls it with ``provider_arg=<sub>``.

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
            if provider_arg is not None:
                self._providers[key] = provider_arg
            return obj

        return decorator

    def _ensure_builtins(self) -> None:
        if self._builtins_imported:
            return
        self._builtins_imported = True
        for module in self.builtin_modules:
            importlib.import_module(module)

    # ------------------------------------------------------------------ plugin entries
    def _entries(self) -> list[_Entry]:
        return [e for e in _env_filter(_discover().entries) if e.group == self.group]

    def _by_name(self) -> dict[str, list[_Entry]]:
        out: dict[str, list[_Entry]] = {}
        for entry in self._entries():
            if _SLUG.match(entry.name):
                out.setdefault(entry.key, []).append(entry)
        return out

    @staticmethod
    def _by_dist(entries: list[_Entry]) -> dict[str, list[_Entry]]:
        out: dict[str, list[_Entry]] = {}
        for entry in entries:
            out.setdefault(entry.dist_key, []).append(entry)
        return out

    def _shadows_itself(self, entry: _Entry) -> bool:
        """Whether a same-named in-process object comes from the entry point's own module."""
        obj = self._objects.get(entry.key)
        return obj is not None and getattr(obj, "__module__", None) == entry.value.split(":")[0].strip()

    # ------------------------------------------------------------------ listing (no plugin import)
    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names that resolve, matching a shell-style wildcard pattern (no plugin is imported).

        A name declared by several plugins (or shadowed by a built-in) appears qualified, as
        ``distribution:name``, once per plugin.
        """
        self._ensure_builtins()
        out = set(self._objects)
        for key, entries in self._by_name().items():
            dists = {
                d: items
                for d, items in self._by_dist(entries).items()
                if len({e.value for e in items}) == 1  # a distribution's duplicate resolves to nothing
                and not (key in self._objects and self._shadows_itself(items[0]))
            }
            if key not in self._objects and len(dists) == 1 and len(entries) == 1:
                out.add(key)
            else:
                out.update(f"{d}:{key}" for d in dists)
        return sorted(n for n in out if fnmatch.fnmatchcase(n, pattern))

    def entries(self) -> list[PluginInfo]:
        """Every built-in and enabled plugin entry of the group, with its status (no plugin is imported)."""
        self._ensure_builtins()
        infos = [
            PluginInfo(
                self.group,
                key,
                "tta",
                None,
                _target_of(obj),
                builtin=True,
                provider_arg=self._providers.get(key),
            )
            for key, obj in sorted(self._objects.items())
        ]
        by_name = self._by_name()
        for entry in sorted(self._entries(), key=lambda e: (e.key, e.dist_key, e.value)):
            status, problem = "ok", None
            if not _SLUG.match(entry.name):
                status = "invalid-name"
                problem = (
                    f"{self.kind} name {entry.name!r} declared by {entry.describe()} is not a lowercase "
                    "slug (letters, digits, '_', '-', '.'): rename the entry point"
                )
            elif entry.key in self._objects and not self._shadows_itself(entry):
                status = "shadowed"
                problem = (
                    f"{entry.describe()} declares {self.kind} {entry.key!r}, a name reserved for a built-in: "
                    f"'{entry.key}' keeps meaning the built-in; write '{entry.qualified_name}' for the "
                    "plugin's, and rename the entry point"
                )
            else:
                dists = self._by_dist(by_name.get(entry.key, []))
                values = {e.value for e in dists.get(entry.dist_key, [])}
                if len(values) > 1:
                    status = "duplicate"
                    problem = (
                        f"distribution '{entry.dist}' declares {self.kind} {entry.key!r} {len(values)} times "
                        f"in {self.group} with different targets ({', '.join(sorted(values))}): keep one"
                    )
                elif len(dists) > 1 and entry.key not in self._objects:
                    status = "ambiguous"
                    problem = _ambiguity_message(self, entry.key, dists)
            infos.append(
                PluginInfo(
                    self.group,
                    entry.name,
                    entry.dist,
                    entry.version,
                    entry.value,
                    builtin=False,
                    status=status,
                    problem=problem,
                )
            )
        return infos

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            dist, base, _ = _parse(name)
        except PluginNotFoundError:
            return False
        self._ensure_builtins()
        if dist is None and base in self._objects:
            return True
        if dist is not None and dist in BUILTIN_SOURCES:
            return base in self._objects
        dists = self._by_dist(self._by_name().get(base, []))
        if dist is not None:
            return len({e.value for e in dists.get(dist, [])}) == 1
        return len(dists) == 1 and len({e.value for e in next(iter(dists.values()))}) == 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    # ------------------------------------------------------------------ lookups
    def get(self, name: str) -> T:
        """The object registered under ``name`` (imported and checked on first request, then cached).

        Args:
            name: ``name``, ``distribution:name`` or ``provider/sub-name`` (see the module docstring).

        Returns:
            The object; for ``provider/sub-name``, a :func:`functools.partial` of the provider with the
            sub-name bound to its provider argument.

        Raises:
            PluginNotFoundError: With close-match suggestions when ``name`` is unknown.
            PluginAmbiguousError: When several plugins declare the bare name.
            PluginLoadError: When the plugin fails to import.
            PluginTypeError: When the plugin's object breaks the group's contract.
        """
        obj, bound = self._lookup(name)
        return functools.partial(obj, **bound) if bound else obj  # type: ignore[return-value]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the object registered under ``name`` with ``kwargs`` (``None`` values dropped).

        Raises:
            PluginTypeError: When a factory returns something other than its group's type (for
                ``tta.backbones``, ``tta.datasets`` and ``tta.distances``).
            TypeError: When ``kwargs`` repeat the provider argument of a ``provider/sub-name``.
        """
        obj, bound = self._lookup(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        clash = set(bound) & set(kwargs)
        if clash:
            arg = clash.pop()
            raise TypeError(
                f"{self.kind} {name!r} already sets {arg}={bound[arg]!r}; "
                f"do not pass {arg}={kwargs[arg]!r} too"
            )
        result = obj(**bound, **kwargs)  # type: ignore[operator]
        if self.contract is not None and self.contract.form == "factory":
            result = self._check_result(result, None, name=name, obj=obj)
        return result

    def _lookup(self, name: str) -> tuple[Any, dict[str, str]]:
        if not isinstance(name, str):
            raise TypeError(f"expected a {self.kind} name (str), got {type(name).__name__}")
        dist, base, sub = _parse(name, self)
        obj = self._resolve(dist, base, name)
        if sub is None:
            return obj, {}
        arg = self._provider_arg(base, obj)
        if arg is None:
            raise PluginNotFoundError(
                f"{self.kind} {base!r} in group '{self.group}' is not a provider, so {name!r} means nothing: "
                f"write '{base}' with keyword arguments instead (a provider declares the keyword that "
                "receives '<sub-name>' with a `tta_provider_arg` attribute)"
            )
        return obj, {arg: sub}

    def _provider_arg(self, key: str, obj: Any) -> str | None:
        if key in self._providers and self._objects.get(key) is obj:
            return self._providers[key]
        target = getattr(obj, "__wrapped__", obj)
        arg = getattr(target, "tta_provider_arg", None)
        return arg if isinstance(arg, str) and arg else None

    def _resolve(self, dist: str | None, key: str, name: str) -> Any:
        self._ensure_builtins()
        if dist is not None and dist in BUILTIN_SOURCES:
            if key in self._objects:
                return self._objects[key]
            raise self._not_found(name, key, candidates=list(self._objects), qualifier="tta")
        dists = self._by_dist(self._by_name().get(key, []))
        if dist is None:
            if key in self._objects:
                self._warn_shadowed(key, dists)
                return self._objects[key]
            if len(dists) > 1:
                raise PluginAmbiguousError(_ambiguity_message(self, key, dists))
            if not dists:
                raise self._not_found(name, key)
            dist = next(iter(dists))
        entries = dists.get(dist)
        if not entries:
            own = [e.key for e in self._entries() if e.dist_key == dist]
            raise self._not_found(name, key, candidates=own, qualifier=dist)
        values = sorted({e.value for e in entries})
        if len(values) > 1:
            raise PluginAmbiguousError(
                f"distribution '{entries[0].dist}' declares {self.kind} {key!r} {len(values)} times in "
                f"'{self.group}' with different targets ({', '.join(values)}); its entry points must be "
                "fixed (`tta plugins check` lists every conflict)"
            )
        return self._load(entries[0])

    def _warn_shadowed(self, key: str, dists: dict[str, list[_Entry]]) -> None:
        others = [d for d, entries in dists.items() if not self._shadows_itself(entries[0])]
        if others and key not in self._warned:
            self._warned.add(key)
            alternatives = ", ".join(f"'{d}:{key}'" for d in sorted(others))
            warnings.warn(
                f"{self.kind} {key!r} is a built-in name of '{self.group}', also declared by the plugin(s) "
                f"{', '.join(sorted(others))}: using the built-in. Write {alternatives} for the plugin's.",
                PluginWarning,
                stacklevel=5,
            )

    def _not_found(
        self, name: str, key: str, candidates: list[str] | None = None, qualifier: str | None = None
    ) -> PluginNotFoundError:
        known = self.names() if candidates is None else sorted(set(candidates))
        pool = known + [n.split(":", 1)[1] for n in known if ":" in n]
        close = difflib.get_close_matches(key, pool, n=3, cutoff=0.5)
        if qualifier is not None and qualifier not in BUILTIN_SOURCES:
            close = [f"{qualifier}:{c}" for c in close]
        elif qualifier is not None:
            close = [f"tta:{c}" for c in close]
        hint = f" Did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?" if close else ""
        where = f" in group '{self.group}'"
        if qualifier is not None and qualifier not in BUILTIN_SOURCES:
            installed = {e.dist_key for e in _discover().entries}
            if qualifier not in installed:
                where += f": no installed distribution '{qualifier}' declares entry points in it"
            elif qualifier not in {e.dist_key for e in self._entries()}:
                where += f": distribution '{qualifier}' is installed but disabled ({environment_note()})"
            else:
                where += f" of distribution '{qualifier}'"
        disabled = self._disabled_providers(key)
        note = f" {disabled}" if disabled else ""
        return PluginNotFoundError(
            f"Unknown {self.kind} {name!r}{where}.{hint} Known: {', '.join(known) or '(none)'}.{note} "
            f"Run `tta plugins list --group {self.short_group}` to see every name, or install the plugin "
            "that provides it."
        )

    def _disabled_providers(self, key: str) -> str:
        """A hint when the environment hides plugins that declare ``key``."""
        note = environment_note()
        if not note:
            return ""
        hidden = sorted(
            {e.dist for e in _discover().entries if e.group == self.group and e.key == key}
            - {e.dist for e in self._entries()}
        )
        if hidden:
            return f"It is declared by {', '.join(hidden)}, but {note}."
        return f"(Note: {note}.)"

    # ------------------------------------------------------------------ loading and contracts
    def _load(self, entry: _Entry) -> Any:
        ident = (entry.dist_key, entry.key, entry.value)
        with _LOCK:
            if ident in self._loaded:
                return self._loaded[ident]
            try:
                obj = entry.ep.load()
            except Exception as err:
                version = f"=={entry.version}" if entry.version else ""
                raise PluginLoadError(
                    f"Failed to load {self.kind} {entry.key!r} of group '{self.group}' from "
                    f"{entry.describe()}: {type(err).__name__}: {err}. The plugin is broken or incompletely "
                    f"installed: reinstall it (`pip install --force-reinstall {entry.dist}{version}`) or "
                    f"report it to its authors. To run without it, set {ENV_ALLOW_LIST} to the plugins you "
                    f"use, or {ENV_DISABLE}=1."
                ) from err
            checked = self._check_object(obj, entry)
            self._loaded[ident] = checked
            return checked

    def _contract_text(self) -> str:
        return self.contract.description if self.contract else "any object"

    def _check_object(self, obj: Any, entry: _Entry) -> Any:
        """Check a freshly loaded plugin object against the contract; wrap factories to check results."""
        contract = self.contract
        if contract is None:
            return obj
        expected = contract.expected_type()

        def wrong(why: str) -> PluginTypeError:
            return PluginTypeError(
                f"{self.kind} {entry.key!r} of group '{self.group}' from {entry.describe()} has the wrong "
                f"type: expected {self._contract_text()}; received {_describe_object(obj)}{why}. Fix the "
                "entry point's target (or report it to the plugin's authors)."
            )

        if contract.form == "instance":
            if not isinstance(obj, expected):
                raise wrong("")
            return obj
        if inspect.isclass(obj):
            if not issubclass(obj, expected):
                raise wrong(f", which is not a subclass of {contract.expected_name}")
            if inspect.isabstract(obj):
                missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
                raise wrong(f", which is abstract (implement {missing})")
            return obj
        if isinstance(obj, expected):
            raise wrong(" (an instance: point the entry point at its class or at a factory)")
        if not callable(obj):
            raise wrong("")
        return _CheckedFactory(obj, self, entry)

    def _check_result(
        self, result: Any, entry: _Entry | None, name: str | None = None, obj: Any = None
    ) -> Any:
        assert self.contract is not None
        expected = self.contract.expected_type()
        if isinstance(result, expected):
            return result
        if entry is not None:
            origin = f"{self.kind} {entry.key!r} of group '{self.group}' from {entry.describe()}"
        else:
            origin = f"{self.kind} {name!r} of group '{self.group}' ({_target_of(obj)})"
        raise PluginTypeError(
            f"{origin} returned {_describe_object(result)}; expected an instance of "
            f"{self.contract.expected_name} (contract: {self._contract_text()})."
        )

    def check(self) -> list[CheckResult]:
        """Load and check every entry of :meth:`entries` (plugins included); see :func:`check`."""
        results: list[CheckResult] = []
        entries = {(e.dist_key, e.name, e.value): e for e in self._entries()}
        for info in self.entries():
            if info.builtin:
                obj = self._objects[info.name]
                results.append(
                    CheckResult(info, True, None, _describe_object(obj), self._providers.get(info.name))
                )
                continue
            entry = entries[(normalize_distribution(info.source), info.name, info.target)]
            try:
                obj = self._load(entry)
            except PluginError as err:
                results.append(CheckResult(info, False, str(err)))
                continue
            target = getattr(obj, "__wrapped__", obj)
            arg = self._provider_arg(entry.key, obj)
            problem = info.problem
            results.append(CheckResult(info, problem is None, problem, _describe_object(target), arg))
        return results


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


# ---------------------------------------------------------------------------------------------- the groups
BACKBONES: Registry[Any] = Registry(
    "tta.backbones",
    "backbone",
    Contract(
        "tta.backbones.base:Backbone",
        "factory",
        "a tta.backbones.Backbone subclass, or a callable returning a tta.backbones.Backbone",
    ),
    builtin_modules=("tta.backbones",),
    providers={"timm": "model_name"},
)
DATASETS: Registry[Any] = Registry(
    "tta.datasets",
    "dataset",
    Contract(
        "tta.data.datasets:ImageDataset",
        "factory",
        "a callable returning a tta.data.ImageDataset (or a LazyImageDataset / TextDataset); an official "
        "train/test split is declared by a `splits` attribute and a `split` argument",
    ),
    builtin_modules=("tta.data.datasets",),
)
DISTANCES: Registry[Any] = Registry(
    "tta.distances",
    "distance estimator",
    Contract(
        "tta.distances:DistanceEstimator",
        "factory",
        "a concrete tta.distances.DistanceEstimator subclass, or a callable returning a DistanceEstimator",
    ),
    builtin_modules=("tta.distances",),
)
ESTIMATORS: Registry[Any] = Registry(
    "tta.estimators",
    "transferability estimator",
    Contract(
        "tta.estimators.base:Estimator",
        "instance",
        "a tta.estimators.Estimator descriptor (name, fn, inputs, higher_is_better, complexity)",
    ),
    builtin_modules=("tta.estimators",),
)

#: Every registry by its short group name.
REGISTRIES: dict[str, Registry[Any]] = {
    "backbones": BACKBONES,
    "datasets": DATASETS,
    "distances": DISTANCES,
    "estimators": ESTIMATORS,
}


def get_registry(group: str) -> Registry[Any]:
    """The registry of a group, by short (``distances``) or full (``tta.distances``) name.

    Raises:
        PluginNotFoundError: For an unknown group.
    """
    key = group.strip().lower().removeprefix("tta.")
    if key not in REGISTRIES and f"{key}s" in REGISTRIES:  # "distance" for "distances"
        key = f"{key}s"
    if key not in REGISTRIES:
        close = difflib.get_close_matches(key, list(REGISTRIES), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginNotFoundError(f"Unknown plugin group {group!r}.{hint} Groups: {', '.join(REGISTRIES)}.")
    return REGISTRIES[key]


def check(groups: Iterable[str] | None = None, distribution: str | None = None) -> list[CheckResult]:
    """Load every built-in and enabled plugin object and check it against its group's contract.

    Args:
        groups: Groups to check (short or full names); default: all.
        distribution: Only this distribution's plugins (conflicts with others are still found).

    Returns:
        One result per name; ``ok`` is false for load failures, wrong types and conflicts
        (ambiguous, shadowed, duplicate or invalid names).
    """
    registries = [get_registry(g) for g in groups] if groups else list(REGISTRIES.values())
    results = [r for registry in registries for r in registry.check()]
    if distribution is not None:
        key = normalize_distribution(distribution)
        results = [r for r in results if normalize_distribution(r.info.source) == key]
    return results
