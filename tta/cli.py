"""The ``tta`` command: a LightningCLI over :class:`TaskTransferAnalysis` and :class:`TaskPairDataModule`.

``tta fit --config configs/demo.yaml`` learns the transform and then evaluates the bound on the test
splits; ``tta test --config ... --ckpt_path ...`` re-evaluates a saved fit. Both print the result and
write it as ``result.json`` into the run's log directory.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from tta.data.datamodule import TaskPairDataModule
from tta.modules.analysis import TaskTransferAnalysis
from tta.results import config_hash, format_result, versions, write_json_atomic

__all__ = ["TTACLI", "main"]


class TTACLI(LightningCLI):
    """LightningCLI whose ``fit`` ends with a test pass and whose runs end with a JSON result record."""

    def before_fit(self) -> None:
        self._started = time.perf_counter()

    before_test = before_fit

    def after_fit(self) -> None:
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self._report("fit")

    def after_test(self) -> None:
        self._report("test")

    def _config_dict(self) -> dict[str, Any]:
        sub = self.config[self.config["subcommand"]] if "subcommand" in self.config else self.config
        return sub.clone().as_dict()

    def _report(self, stage: str) -> None:
        model: TaskTransferAnalysis = self.model  # type: ignore[assignment]
        if not model.result or not self.trainer.is_global_zero:
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
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        path = write_json_atomic(log_dir / "result.json", record)
        from rich.console import Console

        console = Console()
        console.print(format_result(record))
        console.print(f"result written to [bold]{path}[/bold]  (config hash {record['config_hash']})")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``tta`` console script."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "plugins":  # `tta plugins list|check`: no Lightning parser involved
        from tta._plugin_cli import main as plugins_main

        code = plugins_main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    if argv and argv[0] == "--version":
        from tta._plugin_cli import plugin_version_lines

        for name, version in versions().items():
            if not name.startswith("plugin:"):  # listed below, with their groups
                print(f"{name} {version}")
        for line in plugin_version_lines():
            print(line)
        return
    # The frozen backbone is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    TTACLI(
        TaskTransferAnalysis,
        TaskPairDataModule,
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
            "(see also `tta plugins --help` and `tta --version`)"
        },
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
