"""A mistyped ``--model.*`` / ``--data.*`` / ``--trainer.*`` option is one line with the closest valid one.

LightningCLI reports an unknown nested option as a 60-line tree of the union types it tried, the useful
line deep inside. Before it parses, :func:`check_option_names` walks the dotted names of the command line
through the option tree of the analysis (:class:`~tta.modules.TaskTransferAnalysis` and its config
dataclasses), of its data module (:class:`~tta.modules.TaskPairDataModule`, :class:`~tta.data.TaskSpec`)
and of the ``Trainer``, and raises a :class:`~tta.errors.TTAInputError` naming the first unknown one and
the closest known one. Options below a free-form argument (a backbone's ``init_args``, a logger, the
callbacks) and configs that name another model or data class are left to LightningCLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tta.errors import TTAInputError

__all__ = ["check_option_names", "subcommand_argv"]

_DEFAULT_MODELS = {"tta.modules.TaskTransferAnalysis", "tta.TaskTransferAnalysis", "TaskTransferAnalysis"}
_DEFAULT_DATA = {"tta.modules.TaskPairDataModule", "tta.TaskPairDataModule", "TaskPairDataModule"}


def _params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "args", "kwargs")]


def _tree() -> dict[str, dict[str, list[str] | None]]:
    """Section -> option -> its sub-options (``None``: free-form below, not checked)."""
    from lightning.pytorch import Trainer

    from tta.data import TaskSpec
    from tta.fitting import EvalConfig, TransformConfig
    from tta.heads import HeadConfig
    from tta.modules import TaskPairDataModule, TaskTransferAnalysis

    def fields(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    nested_model = {
        "source_head": fields(HeadConfig),
        "probe": fields(HeadConfig),
        "standard_probe": fields(HeadConfig),
        "transform": fields(TransformConfig),
        "evaluation": fields(EvalConfig),
    }
    model = {p: nested_model.get(p) for p in _params(TaskTransferAnalysis.__init__)}
    data = {
        p: (fields(TaskSpec) if p in ("reference", "target") else None) for p in _params(TaskPairDataModule)
    }
    trainer = dict.fromkeys(_params(Trainer.__init__))
    for section in (model, data, trainer):
        section.update({"help": None, "class_path": None, "init_args": None, "dict_kwargs": None})
    return {"model": model, "data": data, "trainer": trainer}


def _configured_classes(argv: Sequence[str]) -> dict[str, str | None]:
    """The ``class_path`` of ``model`` and ``data`` in the configs given (``None``: the defaults)."""
    import yaml

    found: dict[str, str | None] = {"model": None, "data": None}
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports it
        for section in found:
            value = loaded.get(section) if isinstance(loaded, dict) else None
            if isinstance(value, dict) and value.get("class_path"):
                found[section] = str(value["class_path"])
    for i, a in enumerate(argv):
        for section in found:
            if a == f"--{section}" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                found[section] = argv[i + 1]  # `--model SomeClass`
            elif a.startswith(f"--{section}.class_path"):
                found[section] = (
                    a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
                )
    return found


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f": did you mean {close[0]}?" if close else ""


def check_option_names(argv: Sequence[str]) -> None:
    """Raise one :class:`~tta.errors.TTAInputError` for the first mistyped dotted option of ``argv``.

    Args:
        argv: The command line after the subcommand (``fit``, ``test``...).

    Raises:
        tta.errors.TTAInputError: ``unknown option --model.transform.stpes: did you mean
            --model.transform.steps?``.
    """
    # `--trainer.callbacks+=...` appends to a list: the option is `trainer.callbacks`
    options = [
        a[2:].split("=", 1)[0].rstrip("+") for a in argv if a.startswith("--") and "." in a.split("=", 1)[0]
    ]
    if not options:
        return
    classes = _configured_classes(argv)
    tree = _tree()
    for option in options:
        section, *rest = option.split(".")
        if section not in tree or not rest:
            continue
        if section == "model" and classes["model"] not in (None, *_DEFAULT_MODELS):
            continue
        if section == "data" and classes["data"] not in (None, *_DEFAULT_DATA):
            continue
        if rest[0] == "init_args":  # --model.init_args.transform.steps
            rest = rest[1:]
            if not rest:
                continue
        known = tree[section]
        if rest[0] not in known:
            hint = _suggest(rest[0], list(known))
            hint = hint.replace("mean ", f"mean --{section}.") if hint else ""
            listing = {
                "model": "`tta fit --model.help TaskTransferAnalysis` lists them",
                "data": "`tta fit --data.help TaskPairDataModule` lists them",
                "trainer": "`tta fit --help` lists them",
            }[section]
            raise TTAInputError(f"unknown option --{option}{hint} ({listing})")
        sub = known[rest[0]]
        if sub is None or len(rest) < 2 or rest[1] == "help":
            continue
        if rest[1] not in sub:
            hint = _suggest(rest[1], sub)
            hint = hint.replace("mean ", f"mean --{section}.{rest[0]}.") if hint else ""
            valid = " (valid: " + ", ".join(sub) + ")"
            raise TTAInputError(f"unknown option --{option}{hint or valid}")


def subcommand_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The LightningCLI subcommand of ``argv`` and the arguments after it."""
    for i, a in enumerate(argv):
        if not a.startswith("-"):
            return a, list(argv[i + 1 :])
    return None, list(argv)
