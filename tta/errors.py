"""The errors and warnings tta raises for its users.

Every problem a user can fix (bad data, a wrong name, an unwritable folder) is a :class:`TTAError`: its
message says what is wrong, where, and how to fix it, and the ``tta`` command prints it as one line
(``tta: error: ...``) with a non-zero exit code instead of a traceback (``TTA_TRACEBACK=1`` shows the
traceback too). Older, more specific errors (:class:`~tta.plugins.PluginError`,
:class:`~tta.backbones.WeightsMismatchError`...) derive from it as well.
"""

from __future__ import annotations

__all__ = ["NumericalWarning", "TTAError", "TTAInputError", "TTAInterrupted", "TTANumericalError"]


class TTAError(Exception):
    """Base class of every error whose message is meant for the user (printed without a traceback)."""

    #: Exit code of the ``tta`` command when this error ends it.
    exit_code: int = 2


class TTAInputError(TTAError, ValueError):
    """Bad input: data, labels, shapes, names, files or folders that cannot be used as given."""


class TTANumericalError(TTAError, ArithmeticError):
    """A computation produced non-finite values that no input check could have foreseen."""

    exit_code = 3


class TTAInterrupted(TTAError):
    """A run stopped on SIGINT/SIGTERM after saving what it had; rerunning the same command resumes it."""

    exit_code = 130


class NumericalWarning(UserWarning):
    """A numerical problem that does not stop the run (ill-conditioned transform, solver not converged).

    Runs collect these into the ``warnings`` list of their result record.
    """
