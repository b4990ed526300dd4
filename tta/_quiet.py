"""Silence Lightning's known, non-actionable messages: one place for the mechanism and shared patterns."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["LEAFSPEC_DEPRECATION", "drop_lightning_tips", "quiet_keops_on_cpu", "quiet_lightning"]

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


#: Loggers Lightning's ``rank_zero_info`` writes to (the fabric one, and the pytorch one where it rebinds it).
_RANK_ZERO_LOGGERS = ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropTips(logging.Filter):
    """Drops Lightning's advertising lines (``💡 Tip: ... try installing litlogger/litmodels``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def drop_lightning_tips() -> None:
    """Filter Lightning's "💡 Tip" lines out of its rank-zero loggers (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def quiet_keops_on_cpu(environ: dict[str, str] | None = None) -> None:
    """Set ``KEOPS_VERBOSE=0`` on a machine without a CUDA device, unless the user set it.

    KeOps prints "[KeOps] Warning : CUDA libraries not found or could not be loaded; Switching to CPU only."
    whenever it is imported there: nothing to act on (tta's KeOps check reports on KeOps when a run asks
    for its backend). Call before anything imports pykeops or geomloss.
    """
    import os

    env = os.environ if environ is None else environ
    if "KEOPS_VERBOSE" in env:
        return
    import torch

    if not torch.cuda.is_available():
        env["KEOPS_VERBOSE"] = "0"
