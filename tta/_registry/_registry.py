"""The Registry class: built-ins, plugin lookup, loading, checking."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from tta._registry._contract import Contract
from tta._registry._discovery import _LOCK, _discover, _Entry, _env_filter, environment_note
from tta._registry._env import _SLUG, BUILTIN_SOURCES, ENV_ALLOW_LIST, ENV_DISABLE, normalize_distribution
from tta._registry._errors import (
    PluginAmbiguousError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    PluginTypeError,
    PluginWarning,
)
from tta._registry._listing import CheckResult, PluginInfo, _describe_object, _target_of
from tta._registry._names import _ambiguity_message, _parse

T = TypeVar("T")


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
