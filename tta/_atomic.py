"""One way to write a file atomically: a temporary file beside it, fsynced, then ``os.replace``.

A crash, a signal or a full disk leaves the previous file (or none), never a truncated one, and no
temporary file. The file gets the permissions a plain ``open(path, "w")`` would give it
(``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "default_mode"]


def default_mode() -> int:
    """``0o666`` masked by the process umask: the mode of a newly created file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """A temporary path next to ``final``, moved onto it when the block succeeds, removed otherwise.

    Args:
        final: The file to write.
        fsync: Flush the temporary file to disk before the rename.

    Yields:
        The temporary path to write (it exists, empty).
    """
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
