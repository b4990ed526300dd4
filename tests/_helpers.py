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


def tta_fit_command(configs: Any, root: Any, cache: Any, *extra: Any) -> list[str]:
    """``python -m tta.cli fit`` with ``--config`` for each of ``configs``, its log root and cache folder."""
    import sys

    configs = configs if isinstance(configs, (list, tuple)) else [configs]
    cmd = [sys.executable, "-m", "tta.cli", "fit"]
    for config in configs:
        cmd += ["--config", str(config)]
    cmd += ["--trainer.default_root_dir", str(root), "--data.cache_dir", str(cache)]
    return cmd + [str(e) for e in extra]
