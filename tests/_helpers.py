"""Helpers shared by the test modules (imported as ``from _helpers import ...``)."""

from __future__ import annotations

from typing import Any


def quiet_trainer(root: Any, **overrides: Any) -> Any:
    """A one-epoch CPU ``Trainer`` without logger, progress bar or model summary, writing under ``root``."""
    import lightning.pytorch as pl

    kwargs: dict[str, Any] = {
        "max_epochs": 1,
        "default_root_dir": root,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**kwargs, **overrides})
