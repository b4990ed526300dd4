"""The ``tta`` dispatcher: LightningCLI subcommands (fit, test...) and tta's own (rank, benchmark...)."""

from __future__ import annotations

import os
import sys
import traceback

from tta.errors import TTAError, TTAInputError
from tta.results import versions

__all__ = ["SUBCOMMANDS", "error_line", "main"]

#: ``tta <name> ...`` commands outside LightningCLI: name -> module with ``main(argv) -> int``.
SUBCOMMANDS = {
    "plugins": "tta.cli._plugins",
    "cache": "tta.cli._cache",
    "benchmark": "tta.cli._benchmark",
    "rank": "tta.cli._rank",
    "configs": "tta.cli._configs",
}


def error_line(message: object) -> None:
    """Print the one error line every ``tta`` command ends with: ``tta: error: <message>``, unwrapped."""
    text = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"tta: error: {text}", file=sys.stderr, flush=True)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``tta`` console script.

    A :class:`~tta.errors.TTAError` (bad input, a wrong name, an interrupted run...) ends the command with
    its one-line message on stderr and its exit code, without a traceback; so does a full disk (ENOSPC,
    EDQUOT) wherever it is hit. Set ``TTA_TRACEBACK=1`` to see the traceback as well.
    Anything else is a bug and keeps its traceback.
    """
    try:
        _main(args)
    except TTAError as error:
        if os.environ.get("TTA_TRACEBACK", "").strip() not in ("", "0"):
            traceback.print_exc()
        error_line(error)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        print("tta: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except OSError as error:  # a full disk anywhere (TensorBoard's event files, a plugin's writes...)
        from tta._preflight import DISK_FULL_ERRNOS

        if error.errno not in DISK_FULL_ERRNOS:
            raise
        if os.environ.get("TTA_TRACEBACK", "").strip() not in ("", "0"):
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        error_line(
            f"disk full while writing{where} ({error.strerror or error}); free some space, or write "
            "elsewhere (--trainer.default_root_dir, TTA_CACHE_DIR / --data.cache_dir, --output)"
        )
        raise SystemExit(TTAError.exit_code) from None


def _main(args: list[str] | None) -> None:
    from tta.cli._configs import resolve_config_args

    argv = resolve_config_args(sys.argv[1:] if args is None else args)  # --config demo: a shipped config
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself
    else:
        args = argv
    if not argv or argv[0] not in SUBCOMMANDS or argv[0] in ("rank", "benchmark"):  # the ones that fit
        from tta._quiet import drop_lightning_tips, quiet_keops_on_cpu

        quiet_keops_on_cpu()  # its "CUDA libraries not found ... CPU only" line is noise on a CPU machine
        drop_lightning_tips()  # Lightning's "💡 Tip: try installing litlogger" lines
    if argv and argv[0] in SUBCOMMANDS:  # commands of their own: no Lightning parser involved
        import importlib

        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        code = module.main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    if argv and argv[0] == "--version":
        from tta.cli._plugins import plugin_version_lines

        for name, version in versions().items():
            if not name.startswith("plugin:"):  # listed below, with their groups
                print(f"{name} {version}")
        for line in plugin_version_lines():
            print(line)
        return
    from tta.cli._options import check_option_names, subcommand_argv

    sub, rest = subcommand_argv(argv)
    if sub in ("fit", "test", "validate", "predict"):
        check_option_names(rest)  # a typo is one line with the closest option, not LightningCLI's tree
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from tta.cli._lightning import run

    try:
        run(args)
    except MisconfigurationException as err:  # Lightning refused a --trainer.* setting: the user's to fix
        raise TTAInputError(_trainer_message(err)) from None


def _trainer_message(err: Exception) -> str:
    """Lightning's refusal of a trainer setting as one actionable sentence."""
    text = " ".join(str(err).split())
    if "gpu backend" in text.lower() or ("cuda" in text.lower() and "not available" in text.lower()):
        return (
            f"the trainer cannot use the requested accelerator ({text}): this machine has no usable GPU; "
            "use --trainer.accelerator cpu (or auto)"
        )
    return (
        f"invalid trainer setting: {text} (check the --trainer.* options and the config's trainer: section)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
