"""Checks run before any work starts; OS errors as user-facing :class:`~tta.errors.TTAError` s.

- :func:`check_writable_dir`: a folder (log dir, cache dir, output dir) can be written, *before* a run spends
  minutes on feature extraction and fitting; nothing is created on disk by the check.
- :func:`io_error`: an ``OSError`` raised while writing a file, as one clear error (``disk full while
  writing ...``, ``cannot write ...: permission denied``) or ``None`` for errors that are bugs.
- :func:`find_tta_error`: the :class:`~tta.errors.TTAError` a library (jsonargparse while instantiating a
  config's classes, Lightning's hooks) wrapped in its own exception, so that the ``tta`` command can print
  the original one-line message instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tta.errors import TTAError, TTAInputError

__all__ = ["DISK_FULL_ERRNOS", "check_writable_dir", "find_tta_error", "io_error", "refused_global"]

#: ``errno`` values meaning "no space left" (a full disk, or a full quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: ``errno`` values meaning "this place cannot be written" (permissions, a read-only filesystem).
_NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_writable_dir(path: str | os.PathLike[str], what: str, fix: str | None = None) -> Path:
    """Raise a :class:`~tta.errors.TTAInputError` now if files cannot be created in the folder ``path``.

    An existing folder is tested by creating (and removing) a temporary file in it; a missing one by
    checking that its nearest existing ancestor is a writable folder (it is created later, by whoever
    writes there). Nothing is left on disk.

    Args:
        path: The folder.
        what: What goes there, for the message (``"the log directory (--trainer.default_root_dir)"``).
        fix: How to fix it, for the message; default: choose another folder or fix the permissions.

    Returns:
        ``path`` as an absolute :class:`~pathlib.Path`.

    Raises:
        TTAInputError: If ``path`` (or an ancestor) is a file, or the folder cannot be written.
    """
    target = Path(path).expanduser().absolute()
    how = fix or "choose another folder or make it writable"
    probe = target
    while not probe.exists():
        if probe.parent == probe:  # pragma: no cover - the filesystem root always exists
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == target else f" ({probe} is a file, so {target} cannot be created)"
        raise TTAInputError(f"cannot write {what} to {target}: not a directory{where}; {how}")
    try:
        fd, name = tempfile.mkstemp(prefix=".tta-write-test-", dir=probe)
    except OSError as err:
        where = "" if probe == target else f" (cannot create it in {probe})"
        raise TTAInputError(f"cannot write {what} to {target}: {_reason(err)}{where}; {how}") from err
    os.close(fd)
    Path(name).unlink(missing_ok=True)
    return target


def io_error(err: BaseException, path: str | os.PathLike[str], what: str, fix: str) -> TTAError | None:
    """The user-facing error for an ``OSError`` raised while writing ``path``, or ``None``.

    Args:
        err: The exception.
        path: The file being written.
        what: What it is (``"the result record"``, ``"the feature cache entry"``).
        fix: Where else to write, for the message (``"set --trainer.default_root_dir"``).

    Returns:
        A :class:`~tta.errors.TTAError` for a full disk or quota (``disk full while writing ...``), a
        :class:`~tta.errors.TTAInputError` for a folder that cannot be written; ``None`` for anything else
        (a bug: let it propagate).
    """
    if not isinstance(err, OSError):
        return None
    if err.errno in DISK_FULL_ERRNOS:
        return TTAError(
            f"disk full while writing {what} to {path} ({_reason(err)}); nothing half-written was left "
            f"behind. Free some space, or {fix}"
        )
    if err.errno in _NOT_WRITABLE_ERRNOS:
        return TTAInputError(f"cannot write {what} to {path}: {_reason(err)}; {fix}, or fix its permissions")
    return None


def find_tta_error(err: BaseException | None) -> TTAError | None:
    """The first :class:`~tta.errors.TTAError` in ``err``'s chain of causes (``err`` itself included).

    jsonargparse reports a failed instantiation (an unknown backbone name raised in a constructor, a
    :class:`~tta.data.TaskSpec` field out of range) as a ``ValueError`` listing every type of a
    ``Union`` it tried; the user's error is its cause.

    Args:
        err: The exception raised.

    Returns:
        The error to report, or ``None`` when there is none (a bug: keep the traceback).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, TTAError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def refused_global(err: BaseException) -> str | None:
    """The object a ``torch.load(weights_only=True)`` refused to unpickle (``"io.open"``), else ``None``.

    ``None`` means the file is not a readable pickle at all (truncated, corrupt). Torch's own message
    advises ``weights_only=False``, which tta never suggests: callers word the error themselves.
    """
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else None
