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

import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from tta.errors import TTAError
from tta.results import versions

if TYPE_CHECKING:
    from tta._lightning_cli import TTACLI

__all__ = ["SUBCOMMANDS", "TTACLI", "main"]

#: ``tta <name> ...`` commands outside LightningCLI: name -> module with ``main(argv) -> int``.
SUBCOMMANDS = {
    "plugins": "tta._plugin_cli",
    "cache": "tta._cache_cli",
    "benchmark": "tta._benchmark_cli",
    "rank": "tta._rank_cli",
}


def __getattr__(name: str) -> Any:
    if name == "TTACLI":  # imports Lightning: only on demand
        from tta._lightning_cli import TTACLI

        return TTACLI
    raise AttributeError(f"module 'tta.cli' has no attribute {name!r}")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``tta`` console script.

    A :class:`~tta.errors.TTAError` (bad input, a wrong name, an interrupted run...) ends the command with
    its one-line message on stderr and its exit code, without a traceback; set ``TTA_TRACEBACK=1`` to see
    the traceback as well. Anything else is a bug and keeps its traceback.
    """
    try:
        _main(args)
    except TTAError as error:
        if os.environ.get("TTA_TRACEBACK", "").strip() not in ("", "0"):
            traceback.print_exc()
        print(f"tta: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        print("tta: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def _main(args: list[str] | None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in SUBCOMMANDS:  # commands of their own: no Lightning parser involved
        import importlib

        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        code = module.main(argv[1:])
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
    from tta._lightning_cli import run

    run(args)


if __name__ == "__main__":  # pragma: no cover
    main()
