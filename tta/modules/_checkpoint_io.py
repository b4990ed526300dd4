"""Lightning checkpoints written atomically, and a full disk as one clear error.

Lightning's ``TorchCheckpointIO`` writes the serialised checkpoint straight to its final name, so a full
disk (or a kill) mid-write leaves a truncated ``epoch=…ckpt`` that a later ``--ckpt_path`` or resume
trips over. :class:`AtomicCheckpointIO` serialises to a temporary file beside it and renames it into
place (:func:`tta._atomic.atomic_path`): the previous checkpoint or none, never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tta._atomic import atomic_path
from tta._preflight import io_error

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic; ENOSPC/EDQUOT is ``disk full while writing``.

    Remote paths (``s3://``, any fsspec URL) keep Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file and a rename."""
        text = os.fspath(path)
        if "://" in text and not text.startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        final = Path(text.removeprefix("file://"))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(final) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            mapped = io_error(err, final, "the checkpoint", "set --trainer.default_root_dir to another disk")
            if mapped is None:
                raise
            raise mapped from err
