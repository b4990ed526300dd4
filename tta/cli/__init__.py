"""The ``tta`` command: a LightningCLI over :class:`TaskTransferAnalysis` and :class:`TaskPairDataModule`.

Any LightningModule / LightningDataModule can be given with ``class_path`` (e.g. the small CNN's training,
``configs/small_cnn/``); ``model:`` and ``data:`` sections without one are the init arguments of
:class:`TaskTransferAnalysis` and :class:`TaskPairDataModule`. ``tta fit --model.help TaskTransferAnalysis``
lists the analysis options.

``tta fit --config configs/demo.yaml`` learns the transform and then evaluates the bound on the test
splits; ``tta test --config ... --ckpt_path ...`` re-evaluates a saved fit. Both print the result and
write it as ``result.json`` into the run's log directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tta.cli._main import SUBCOMMANDS, main

if TYPE_CHECKING:
    from tta.cli._lightning import RESUME_DIR, TTACLI, run

__all__ = ["RESUME_DIR", "SUBCOMMANDS", "TTACLI", "main", "run"]


def __getattr__(name: str) -> Any:
    if name in ("TTACLI", "run", "RESUME_DIR"):  # imports Lightning: only on demand
        from tta.cli import _lightning

        return getattr(_lightning, name)
    raise AttributeError(f"module 'tta.cli' has no attribute {name!r}")
