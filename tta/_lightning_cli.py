"""The LightningCLI of ``tta fit`` / ``tta test`` (imported by :func:`tta.cli.main` only when needed)."""

from __future__ import annotations

import importlib
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from tta._quiet import LEAFSPEC_DEPRECATION
from tta.data.datamodule import TaskPairDataModule
from tta.modules.analysis import TaskTransferAnalysis
from tta.results import config_hash, format_result, versions, write_json_atomic

__all__ = ["TTACLI", "run"]


def _names_class(class_path: object, cls: type) -> bool:
    """Whether ``class_path`` (as jsonargparse prints it: ``tta.TaskTransferAnalysis``) imports ``cls``."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except ImportError:
        return False


class TTACLI(LightningCLI):
    """LightningCLI whose ``fit`` ends with a test pass and whose runs end with a JSON result record."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `model:` / `data:` without `class_path` are init args of the analysis and of its data module.
        parser.set_defaults(
            {
                "model": {"class_path": f"{TaskTransferAnalysis.__module__}.{TaskTransferAnalysis.__name__}"},
                "data": {"class_path": f"{TaskPairDataModule.__module__}.{TaskPairDataModule.__name__}"},
            }
        )

    def before_fit(self) -> None:
        self._started = time.perf_counter()

    before_test = before_fit

    def after_fit(self) -> None:
        # The analysis prints its own result table; other modules (the small CNN) print their test metrics.
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=not hasattr(self.model, "result"))
        self._report("fit")

    def after_test(self) -> None:
        self._report("test")

    def _config_dict(self) -> dict[str, Any]:
        """The run's config; ``model``/``data`` of the default classes in their short form (no class_path).

        The short form is what configs are written in, a valid input again, and what result records held
        before other modules could be given: ``config["model"]["backbone"]`` keeps its meaning.
        """
        sub = self.config[self.config["subcommand"]] if "subcommand" in self.config else self.config
        config = sub.clone().as_dict()
        for key, cls in (("model", TaskTransferAnalysis), ("data", TaskPairDataModule)):
            node = config.get(key)
            if isinstance(node, dict) and _names_class(node.get("class_path"), cls):
                config[key] = node.get("init_args") or {}
        return config

    def _report(self, stage: str) -> None:
        model: TaskTransferAnalysis = self.model  # type: ignore[assignment]
        # trainer.log_dir is a collective (broadcast from rank zero): every rank must ask for it.
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not getattr(model, "result", None) or not self.trainer.is_global_zero:
            return
        config = self._config_dict()
        hashed = {k: config.get(k) for k in ("model", "data", "seed_everything")}
        callback = self.trainer.checkpoint_callback
        ckpt = (callback and (callback.last_model_path or callback.best_model_path)) or config.get(
            "ckpt_path"
        )
        record = {
            "stage": stage,
            **model.result,
            "config_hash": config_hash(hashed),
            "versions": versions(),
            "checkpoint": ckpt or None,
            "config": config,
        }
        record["timings"]["total"] = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        path = write_json_atomic(log_dir / "result.json", record)
        from rich.console import Console

        console = Console()
        console.print(format_result(record))
        console.print(f"result written to [bold]{path}[/bold]  (config hash {record['config_hash']})")


def run(args: list[str] | None) -> None:
    """Run ``tta fit|test|validate|predict`` with ``args`` (``None``: ``sys.argv[1:]``)."""
    # The frozen backbone is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # Lightning's own use of a deprecated torch pytree API: nothing a user can act on.
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION)
    TTACLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={
            "max_epochs": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "default_root_dir": "runs",
            "deterministic": True,
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "tta: Task Transfer Analysis of frozen representations "
            "(see also `tta plugins|cache|benchmark|rank --help` and `tta --version`)"
        },
        args=args,
    )
