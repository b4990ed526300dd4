"""Silence Lightning's known, non-actionable messages: one place for the mechanism and shared patterns."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["LEAFSPEC_DEPRECATION", "quiet_lightning"]

#: Lightning's own use of a deprecated torch pytree API: nothing a user can act on.
LEAFSPEC_DEPRECATION = r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"


@contextlib.contextmanager
def quiet_lightning(
    *messages: str, loggers: Sequence[str] = (), level: int = logging.WARNING
) -> Iterator[None]:
    """Within the block, ignore warnings matching ``messages`` (and the LeafSpec one) and raise ``loggers``.

    Args:
        *messages: Regular expressions of warning messages to ignore.
        loggers: Names of loggers whose level is raised to ``level`` (restored afterwards).
        level: The level those loggers get inside the block.
    """
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in saved:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            for message in (LEAFSPEC_DEPRECATION, *messages):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, old in saved:
            lg.setLevel(old)
