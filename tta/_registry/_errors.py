"""The plugin errors and warning."""

from __future__ import annotations

from tta.errors import TTAError


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
