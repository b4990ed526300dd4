"""Stop a run cleanly on SIGINT/SIGTERM, keeping a checkpoint that a rerun resumes from.

Two pieces, used by ``tta fit`` (:mod:`tta.cli`) and ``tta benchmark``
(:func:`tta.benchmark.run_benchmark`), and usable on their own:

- :class:`SignalGuard` turns SIGINT (Ctrl+C) and SIGTERM (``kill``, a scheduler's pre-emption) into a stop
  request. While a training step runs (:attr:`SignalGuard.deferred`) the first signal is only recorded, so
  that the run stops at the next step boundary with a consistent state; anywhere else (feature extraction,
  the test pass, a benchmark pair) it raises :class:`Interrupted` at once. A second SIGINT always stops at
  once (the checkpoint of the last periodic save is kept).
- :class:`InterruptCallback` is the Lightning side: at the step boundary after a signal it saves a
  checkpoint atomically and raises :class:`tta.errors.TTAInterrupted` (exit code 130), whose message says
  where the run stopped, where the checkpoint is and how to resume. It also saves the same checkpoint
  periodically (``save_every_s``, ``save_every_n_steps``) so that a SIGKILL or a crash loses little, and
  keeps a small resume record (JSON) that ``tta fit`` reads to resume a rerun of the same command.

Resuming is exact for :class:`~tta.modules.TaskTransferAnalysis`: every random draw of a step is derived
from ``seed`` and the step index, and the checkpoint holds the heads, the transform, the optimiser
states, the best transform state and the loop progress, so a resumed fit runs exactly the missing steps
and ends with the same transform as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tta.errors import TTAInterrupted

__all__ = [
    "SIGNALS",
    "InterruptCallback",
    "Interrupted",
    "SignalGuard",
    "active_guard",
    "describe_progress",
]

#: The signals that stop a run cleanly.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_GUARDS: list[SignalGuard] = []


class Interrupted(BaseException):
    """A stop requested by a signal, raised where the signal arrived (not at a step boundary).

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so that no ``except Exception`` on the way
    (a benchmark pair's error handling, a plugin's) records it as an ordinary failure. ``tta fit`` and
    ``tta benchmark`` turn it into :class:`~tta.errors.TTAInterrupted` with a message about what was kept.

    Args:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        hard: Whether it is the second signal of a run that was already stopping at a step boundary.
    """

    def __init__(self, signal_name: str, hard: bool = False):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.hard = hard


def active_guard() -> SignalGuard | None:
    """The innermost :class:`SignalGuard` in force, or ``None``."""
    return _GUARDS[-1] if _GUARDS else None


class SignalGuard:
    """Turns SIGINT and SIGTERM into a stop request while the ``with`` block runs.

    Outside a training step a signal raises :class:`Interrupted` at once. While :attr:`deferred` is set
    (:class:`InterruptCallback` sets it for the training loop) the first signal is only recorded in
    :attr:`received` and the run stops at the next step boundary; a second SIGINT raises
    :class:`Interrupted` (``hard=True``) at once. The previous handlers are restored on exit. Signals can
    only be handled in the main thread: elsewhere the guard does nothing.

    Example::

        with SignalGuard():
            for item in work:
                process(item)  # Ctrl+C raises Interrupted here; finished items are kept
    """

    def __init__(self) -> None:
        self.deferred = False
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def installed(self) -> bool:
        """Whether the handlers are in force (inside the block, in the main thread)."""
        return bool(self._previous)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        _GUARDS.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self in _GUARDS:
            _GUARDS.remove(self)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.deferred and self.received is None:
            self.received = name
            # os.write: a signal handler must not re-enter a buffered stream
            os.write(
                2,
                f"\ntta: {name} received: stopping after the current step and saving a checkpoint "
                "(Ctrl+C again stops at once)\n".encode(),
            )
            return
        raise Interrupted(name, hard=self.received is not None)


def describe_progress(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[int, int, str]:
    """``(steps done, steps in all, phase)`` of a fit, for messages and the resume record.

    A :class:`~tta.modules.TaskTransferAnalysis` counts its own steps (``step_counter``) over its four
    phases; any other module counts the batches of the current epoch.
    """
    counter = getattr(pl_module, "step_counter", None)
    total = getattr(pl_module, "total_steps", None)
    phase_of = getattr(pl_module, "phase_of", None)
    if counter is not None and isinstance(total, int) and callable(phase_of):
        done = int(counter)
        phase = phase_of(max(done - 1, 0))[0]
        return done, total, str(phase)
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    total_batches = trainer.num_training_batches
    total_int = int(total_batches) if total_batches != float("inf") else -1
    return int(progress.processed), total_int, f"epoch {trainer.current_epoch}"


class InterruptCallback(Callback):
    """Stop a fit at a step boundary on SIGINT/SIGTERM, with a checkpoint to resume from.

    At the end of the step during which the signal arrived it saves a checkpoint (``<checkpoint
    dir>/<filename>.ckpt``, written to a temporary file and renamed, so it is never half-written) and
    raises :class:`~tta.errors.TTAInterrupted`. Raising, rather than asking the trainer to stop, keeps the
    end-of-epoch checkpoint from being written: no checkpoint of an interrupted run looks complete. The
    same checkpoint is also saved periodically; it is removed when the fit completes (the end-of-epoch
    checkpoint of :class:`~lightning.pytorch.callbacks.ModelCheckpoint` then holds the final state).

    ``tta fit`` adds this callback unless the config lists one (to change its options)::

        trainer:
          callbacks:
            - class_path: tta.modules.InterruptCallback
              init_args: {save_every_s: 60}

    Args:
        save_every_s: Save the checkpoint every this many seconds of training (``None``: never); it bounds
            what a SIGKILL or a crash loses. A save of a :class:`~tta.modules.TaskTransferAnalysis`
            takes well under a second.
        save_every_n_steps: Also save every this many training steps (``None``: never).
        filename: Name of the checkpoint file, without ``.ckpt``. The default ``last`` is what
            ``--ckpt_path last`` looks for.
        resume_record: JSON file recording the run's checkpoint, log directory and progress, written at
            the start of training and at each save (``tta fit`` sets it: ``<default_root_dir>/
            .tta-resume/<config hash>.json``); ``None``: none.
    """

    def __init__(
        self,
        save_every_s: float | None = 300.0,
        save_every_n_steps: int | None = None,
        filename: str = "last",
        resume_record: str | None = None,
    ):
        super().__init__()
        if save_every_s is not None and save_every_s <= 0:
            raise ValueError(f"save_every_s must be positive or None, got {save_every_s}")
        if save_every_n_steps is not None and save_every_n_steps <= 0:
            raise ValueError(f"save_every_n_steps must be positive or None, got {save_every_n_steps}")
        self.save_every_s = save_every_s
        self.save_every_n_steps = save_every_n_steps
        self.filename = filename
        self.resume_record = resume_record
        #: Extra fields of the resume record (``tta fit`` puts the logger version and the seed there).
        self.record_extra: dict[str, Any] = {}
        self.checkpoint_path: Path | None = None
        #: Steps done when the checkpoint was last saved (``None``: not yet).
        self.saved_step: int | None = None
        #: Whether the training loop has started (after setup and feature extraction).
        self.started = False
        self._own_guard: SignalGuard | None = None
        self._last_save = 0.0
        self._steps_since_save = 0

    # ------------------------------------------------------------------ helpers
    def checkpoint_dir(self, trainer: pl.Trainer) -> Path:
        """The folder of the checkpoint: the ModelCheckpoint's, else ``<log dir>/checkpoints``."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            return Path(dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def save(self, trainer: pl.Trainer) -> Path:
        """Save the fit's state to :attr:`checkpoint_path` atomically; returns the path."""
        path = self.checkpoint_path or self.checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        self.checkpoint_path = path
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self._last_save = time.monotonic()
        self._steps_since_save = 0
        return path

    def write_record(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, status: str, **extra: Any
    ) -> None:
        """Write the resume record (rank zero; no-op without :attr:`resume_record`)."""
        if not self.resume_record or not trainer.is_global_zero:
            return
        from tta.results import write_json_atomic

        done, total, phase = describe_progress(trainer, pl_module)
        checkpoint = self.checkpoint_path or self.checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        record = {
            **self.record_extra,
            "status": status,
            "checkpoint": str(Path(checkpoint).resolve()),
            "saved_step": self.saved_step,
            "step": done,
            "total_steps": total,
            "phase": phase,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        write_json_atomic(self.resume_record, record)

    def remove_record(self) -> None:
        """Delete the resume record (the run completed, or failed for another reason than a signal)."""
        if self.resume_record:
            path = Path(self.resume_record)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folder, once no other run has a record there
                path.parent.rmdir()

    def _release(self) -> None:
        guard = active_guard()
        if guard is not None:
            guard.deferred = False
        if self._own_guard is not None:
            self._own_guard.__exit__(None, None, None)
            self._own_guard = None

    def _due(self) -> bool:
        if self.save_every_n_steps is not None and self._steps_since_save >= self.save_every_n_steps:
            return True
        return self.save_every_s is not None and time.monotonic() - self._last_save >= self.save_every_s

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        guard = active_guard()
        if guard is None or not guard.installed:  # standalone use: no `tta fit` guard around the fit
            self._own_guard = guard = SignalGuard().__enter__()
        guard.deferred = True
        guard.received = None
        self.started = True
        self._last_save = time.monotonic()
        self._steps_since_save = 0
        self.checkpoint_path = self.checkpoint_dir(trainer) / f"{self.filename}.ckpt"
        self.write_record(trainer, pl_module, "running")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._steps_since_save += 1
        guard = active_guard()
        received = guard.received if guard is not None else None
        due = self._due()
        if trainer.world_size > 1:  # every rank stops (and saves) at the same step boundary
            stop = trainer.strategy.reduce_boolean_decision(received is not None, all=False)
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
            received = received or ("a signal on another rank" if stop else None)
        if received is None and not due:
            return
        done, total, phase = describe_progress(trainer, pl_module)
        self.saved_step = done  # before saving: the checkpoint records its own step
        path = self.save(trainer)
        if received is None:
            self.write_record(trainer, pl_module, "running")
            return
        self.write_record(trainer, pl_module, "interrupted", signal=received)
        raise TTAInterrupted(
            f"interrupted by {received} at step {done}/{total} ({phase}); checkpoint saved to {path}; "
            f"rerun the same command to resume (or pass --ckpt_path {path})"
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        guard = active_guard()
        received = guard.received if guard is not None and guard.deferred else None
        self._release()
        final = _final_checkpoint(trainer)
        path = self.checkpoint_path
        done, total, _ = describe_progress(trainer, pl_module)
        resumed = getattr(trainer, "ckpt_path", None)
        if (
            final is None
            and path is not None
            and path.is_file()
            and resumed is not None
            and Path(resumed).resolve() == path.resolve()
            and self._steps_since_save == 0
            and done == total
        ):
            # resumed from a save after the last step (a signal in that step): no step was left to run,
            # so nothing else was written, and this checkpoint is the complete fit: keep it as the final one
            final = str(path)
        if path is not None and trainer.is_global_zero and final != str(path):
            path.unlink(missing_ok=True)  # a mid-fit state: never leave it beside the final checkpoint
        self.checkpoint_path = Path(final) if final else None
        if final:
            self.write_record(trainer, pl_module, "trained")  # the test pass may still be interrupted
        else:
            self.remove_record()
        if received is not None:  # arrived after the last step: the fit is complete and saved
            where = f"the final checkpoint {final} is kept" if final else "no checkpoint was written"
            raise TTAInterrupted(
                f"interrupted by {received} after the last training step, before testing; {where}; "
                "rerun the same command to evaluate it"
            )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()
        if self.checkpoint_path is not None:  # a save cut short by a second signal
            self.checkpoint_path.with_name(f".{self.checkpoint_path.name}.tmp").unlink(missing_ok=True)
        if isinstance(exception, (TTAInterrupted, Interrupted)):
            return  # the record (and the last checkpoint saved) stay, for the rerun
        self.remove_record()  # a failure is not resumed: a rerun starts over

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._own_guard is not None:
            self._release()

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self.saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_step = state_dict.get("saved_step")


def _final_checkpoint(trainer: pl.Trainer) -> str | None:
    """The checkpoint that ModelCheckpoint wrote at the end of training (its last, else its best)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        return None
    path = callback.last_model_path or callback.best_model_path
    return path or None
