"""The LightningCLI of ``tta fit`` / ``tta test`` (imported by :func:`tta.cli.main` only when needed)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tta._preflight import check_writable_dir, find_tta_error, refused_global
from tta._quiet import LEAFSPEC_DEPRECATION
from tta.errors import TTAError, TTAInputError, TTAInterrupted
from tta.modules._analysis import TaskTransferAnalysis
from tta.modules._checkpoint_io import AtomicCheckpointIO
from tta.modules._datamodule import TaskPairDataModule
from tta.modules._interrupt import InterruptCallback, Interrupted, SignalGuard
from tta.results import AnalysisResult, config_hash, format_result, reading, versions, write_json_atomic

__all__ = ["RESUME_DIR", "TTACLI", "run"]

#: Folder of ``default_root_dir`` holding one resume record per interrupted ``tta fit`` (by config hash).
RESUME_DIR = ".tta-resume"

#: Lightning's warning on a mid-epoch resume: the analysis ignores its batches (each step draws its own
#: data from ``seed`` and the step index), so restarting the loader from its first item changes nothing.
_MID_EPOCH_RESUME = r".*resuming from a checkpoint that ended before the epoch ended.*"


def _names_class(class_path: object, cls: type) -> bool:
    """Whether ``class_path`` (as jsonargparse prints it: ``tta.TaskTransferAnalysis``) imports ``cls``."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except ImportError:
        return False


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one ``tta: error:`` line.

    jsonargparse prints the whole usage, a tip and the tree of every Union alternative it tried (20 lines
    for ``--model.transform.steps abc``); this raises :class:`~tta.errors.TTAInputError` with the option
    and the innermost problem instead.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse nests (a class's init_args): its caller reports
            super().error(message, ex)
        raise TTAInputError(parser_error_line(message, self.prog.replace(" [options]", ""))) from None


_HEADER = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_NOISE = (
    "Does not validate",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Problem with given class_path",
    "- Expected a <class 'NoneType'>",
)


def parser_error_line(message: str, prog: str = "tta fit") -> str:
    """One sentence for jsonargparse's nested error ``message``: the option and the innermost problem.

    E.g. ``invalid --model.transform.steps: Expected a <class 'int'>. Got value: abc (see tta fit --help)``.
    """
    keys: list[str] = []
    detail = ""
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if m := _HEADER.match(line):
            keys.append(m.group(1))
            if m.group(2):
                detail = m.group(2)
                break
            continue
        detail = line.lstrip("- ")
        break
    if not keys:
        return f"{detail or message.strip()} (see {prog} --help)"
    option = "--" + ".".join(keys)
    hint = " (a shipped config's name works too: tta configs list)" if keys == ["config"] else ""
    return f"invalid {option}: {detail or 'not accepted'}{hint} (see {prog} --help)"


class TTACLI(LightningCLI):
    """LightningCLI whose ``fit`` ends with a test pass and whose runs end with a JSON result record.

    ``fit`` stops cleanly on SIGINT/SIGTERM (:class:`~tta.modules.InterruptCallback`, added unless the
    config lists one) and a rerun of the same command resumes it: the resume record
    ``<default_root_dir>/.tta-resume/<hash>.json`` (hash of ``model``, ``data`` and ``seed_everything``
    as given) points at the checkpoint and the log directory, which the rerun reuses.
    """

    _given_seed: Any = None
    _resume: dict[str, Any] | None = None
    _interrupt: InterruptCallback | None = None

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # before LightningCLI replaces `seed_everything: true` by the random seed it draws
        self._given_seed = self._run_config().get("seed_everything")

    def _run_config(self) -> Any:
        """The config of the subcommand being run (``fit``, ``test``...), or the whole one without any."""
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `model:` / `data:` without `class_path` are init args of the analysis and of its data module.
        parser.set_defaults(
            {
                "model": {"class_path": "tta.modules.TaskTransferAnalysis"},
                "data": {"class_path": "tta.modules.TaskPairDataModule"},
            }
        )

    def _parse_ckpt_path(self) -> None:
        """With ``--config``, the config and the command line define the model; the checkpoint its state.

        LightningCLI parses a checkpoint's hyper-parameters *over* the config and the command line, so
        ``tta test --config c.yaml --ckpt_path k.ckpt --model.evaluation.w_eval classwise`` silently
        evaluated with the fit's options, and a checkpoint of another fit swapped in its backbone. Here
        the given options win; the checkpoint must be of the same backbone (else one error), and its
        weights must fit the model (checked when it is loaded). Without ``--config`` the checkpoint's
        hyper-parameters fill in the model, as in LightningCLI.
        """
        sub = self._run_config()
        ckpt_path = sub.get("ckpt_path")
        if not sub.get("config") or not ckpt_path or not Path(ckpt_path).is_file():
            super()._parse_ckpt_path()
            return
        hparams = _checkpoint_hparams(ckpt_path)
        saved = _canonical_backbone(hparams.get("backbone"))
        given = _canonical_backbone(_backbone_name(sub.get("model.init_args.backbone", None)))
        if saved is not None and given is not None and saved != given:
            raise TTAInputError(
                f"checkpoint {ckpt_path} was fitted with backbone {saved!r} but the config gives {given!r}: "
                "pass the config of that fit (its config.yaml in the run folder)"
            )

    def before_instantiate_classes(self) -> None:
        """Check the log and cache folders before minutes of extraction and fitting."""
        from tta.data._cache import default_cache_dir

        sub = self._run_config()
        root = sub.get("trainer.default_root_dir")
        if root:
            check_writable_dir(
                root, "the run's logs and result", fix="set --trainer.default_root_dir to a writable folder"
            )
        if self.subcommand == "fit":
            self._resume_logger_version(sub)
        data = sub.get("data.init_args") or {}
        if data.get("use_cache", False):
            check_writable_dir(
                data.get("cache_dir") or default_cache_dir(),
                "the feature cache",
                fix="set TTA_CACHE_DIR or --data.cache_dir to a writable folder, or --data.use_cache false",
            )

    def _resume_logger_version(self, sub: Any) -> None:
        """Give the logger of a resumed fit the version (log directory) of the interrupted run.

        Set in the config, before the Trainer is built: the default logger becomes an explicit
        ``TensorBoardLogger`` with that ``version``; a configured logger gets it unless it names one.
        """
        root = sub.get("trainer.default_root_dir") or "."
        record = _read_record(Path(root) / RESUME_DIR / f"{self._resume_key()}.json")
        version = None if record is None else record.get("logger_version")
        if version is None or not Path(record["checkpoint"]).is_file():  # type: ignore[index]
            return
        logger = sub.get("trainer.logger")
        if logger is None or logger is True:
            sub["trainer.logger"] = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=root, version=version),
            )
        elif isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
            if logger.init_args.get("version") is None:
                logger.init_args["version"] = version

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, saving checkpoints atomically unless the config chose its own checkpoint IO."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # never truncated; a full disk is one line
        return trainer

    def before_fit(self) -> None:
        self._started = time.perf_counter()
        self._prepare_resume()

    def before_test(self) -> None:
        self._started = time.perf_counter()

    def fit(
        self, model: LightningModule, datamodule: Any = None, ckpt_path: str | None = None, **kw: Any
    ) -> None:
        """``trainer.fit``, resumed from the resume record's checkpoint when there is one."""
        if self._resume is not None:
            ckpt_path = self._resume["checkpoint"]
        kw["weights_only"] = _weights_only(kw.get("weights_only"), ckpt_path)
        try:
            with _misfit_as_one_line(ckpt_path):
                self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kw)
        except Interrupted as err:
            raise TTAInterrupted(self._interrupted_message(err)) from None

    def test(
        self, model: LightningModule, datamodule: Any = None, ckpt_path: str | None = None, **kw: Any
    ) -> Any:
        """``trainer.test``, loading the checkpoint with ``weights_only=True``."""
        kw["weights_only"] = _weights_only(kw.get("weights_only"), ckpt_path)
        with _misfit_as_one_line(ckpt_path):
            return self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kw)

    def after_fit(self) -> None:
        # The analysis prints its own result table; other modules (the small CNN) print their test metrics.
        try:
            self.trainer.test(
                self.model, datamodule=self.datamodule, verbose=not hasattr(self.model, "result")
            )
        except Interrupted as err:
            where = self._interrupt.checkpoint_path if self._interrupt is not None else None
            kept = f"the fitted model is saved in {where}" if where else "the fit was not saved"
            raise TTAInterrupted(
                f"interrupted by {err.signal_name} while testing the fitted model; {kept}; rerun the same "
                "command to evaluate it (no training step is redone)"
            ) from None
        self._report("fit")
        if self._interrupt is not None:
            self._interrupt.remove_record()  # complete: a rerun is a new run

    # ---------------------------------------------------------------- interruption and resume
    def _resume_key(self) -> str:
        config = self._config_dict()
        hashed = {k: config.get(k) for k in ("model", "data")}
        hashed["seed_everything"] = self._given_seed
        return config_hash(hashed)

    def _prepare_resume(self) -> None:
        """Add the interrupt callback, and find the checkpoint of an interrupted run of the same config."""
        trainer = self.trainer
        callback = next((c for c in trainer.callbacks if isinstance(c, InterruptCallback)), None)
        if callback is None:
            callback = InterruptCallback()
            trainer.callbacks.append(callback)
        self._interrupt = callback
        key = self._resume_key()
        record_path = Path(trainer.default_root_dir) / RESUME_DIR / f"{key}.json"
        callback.resume_record = callback.resume_record or str(record_path)
        sub = self._run_config()
        given = sub.get("ckpt_path")
        record = _read_record(Path(callback.resume_record))
        if given in (None, "last") and record is not None and Path(record["checkpoint"]).is_file():
            self._resume = record  # its logger version was set in the config (_resume_logger_version)
            if isinstance(record.get("seed"), int) and record["seed"] != sub.get("seed_everything"):
                from lightning.pytorch import seed_everything

                seed_everything(record["seed"], workers=True, verbose=False)  # the seed the run drew
                sub["seed_everything"] = record["seed"]
            if isinstance(self.model, TaskTransferAnalysis):
                warnings.filterwarnings("ignore", message=_MID_EPOCH_RESUME)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            step = record.get("saved_step")
            total, phase = record.get("total_steps"), record.get("phase")
            where = f"step {step}/{total}, {phase}" if step is not None else ""
            print(
                f"tta: resuming from {record['checkpoint']}{f' ({where})' if where else ''}; "
                f"delete {callback.resume_record} to start over",
                file=sys.stderr,
                flush=True,
            )
        logger = trainer.logger
        callback.record_extra = {
            "config_hash": key,
            "command": sys.argv,
            "log_dir": str(Path(trainer.log_dir or trainer.default_root_dir).resolve()),
            "logger_version": getattr(logger, "version", None) if logger is not None else None,
            "seed": sub.get("seed_everything"),
        }

    def _interrupted_message(self, err: Interrupted) -> str:
        """The message of a stop that did not happen at a step boundary (during setup, or a second SIGINT)."""
        callback = self._interrupt
        if callback is None or not callback.started:
            _remove_if_empty(self.trainer.log_dir)  # no version folder without anything in it
            return (
                f"interrupted by {err.signal_name} before training started (loading data or extracting "
                "features); rerun the same command to start again (finished feature cache entries are reused)"
            )
        done = int(getattr(self.model, "step_counter", -1))
        at = f" at step {done}/{getattr(self.model, 'total_steps', '?')}" if done >= 0 else ""
        path = callback.checkpoint_path
        if callback.saved_step is not None and path is not None and path.is_file():
            kept = (
                f"the checkpoint of step {callback.saved_step} is kept in {path}: rerun the same command to "
                f"resume from it (or pass --ckpt_path {path})"
            )
        else:
            kept = "no checkpoint had been saved yet: rerunning the same command starts over"
        how = "a second SIGINT" if err.hard else err.signal_name
        return f"interrupted by {how}{at} without saving; {kept}"

    def after_test(self) -> None:
        self._report("test")

    def _config_dict(self) -> dict[str, Any]:
        """The run's config; ``model``/``data`` of the default classes in their short form (no class_path).

        The short form is what configs are written in, a valid input again, and what result records held
        before other modules could be given: ``config["model"]["backbone"]`` keeps its meaning.
        """
        sub = self._run_config()
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
        result = getattr(model, "result", None)
        if not isinstance(result, AnalysisResult) or not self.trainer.is_global_zero:
            return
        config = self._config_dict()
        hashed = {k: config.get(k) for k in ("model", "data", "seed_everything")}
        callback = self.trainer.checkpoint_callback
        kept = self._interrupt.checkpoint_path if self._interrupt is not None else None
        ckpt = (
            (callback and (callback.last_model_path or callback.best_model_path))
            or (str(kept) if kept is not None and Path(kept).is_file() else None)
            or config.get("ckpt_path")
        )
        result = result.with_timings(
            total=time.perf_counter() - getattr(self, "_started", time.perf_counter())
        )
        record = {
            "stage": stage,
            **result.to_dict(),
            "config_hash": config_hash(hashed),
            "versions": versions(),
            "checkpoint": ckpt or None,
            "config": config,
        }
        if stage == "fit" and self._resume is not None:
            record["resumed_from"] = self._resume["checkpoint"]
        path = write_json_atomic(log_dir / "result.json", record)
        from rich.console import Console

        console = Console()
        console.print(format_result(result))
        console.print(reading(result))
        console.print(f"result written to [bold]{path}[/bold]  (config hash {record['config_hash']})")


def run(args: list[str] | None) -> None:
    """Run ``tta fit|test|validate|predict`` with ``args`` (``None``: ``sys.argv[1:]``)."""
    # The frozen backbone is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # Lightning's own use of a deprecated torch pytree API: nothing a user can act on.
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION)
    try:
        with SignalGuard():  # SIGINT/SIGTERM: a clean stop (exit 130) wherever they arrive
            _cli(args)
    except Interrupted as err:
        raise TTAInterrupted(f"interrupted by {err.signal_name}; nothing was saved") from None
    except TTAError:
        raise
    except Exception as err:  # jsonargparse wraps constructor errors (a "Union subtypes" ValueError)
        if isinstance(err, ValueError) and "is not in bounds, numpy accepts" in str(err):
            raise TTAInputError(f"invalid --seed_everything: {err}") from None  # Lightning's seed check
        found = find_tta_error(err)
        if found is None:
            raise
        raise found from None


def _read_record(path: Path) -> dict[str, Any] | None:
    """A resume record, or ``None`` when absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("checkpoint"), str) else None


def _cli(args: list[str] | None) -> None:
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
            "enable_model_summary": False,  # a table of the frozen backbone's parameters: noise here
        },
        save_config_kwargs={"overwrite": True},
        parser_class=OneLineParser,
        parser_kwargs={
            "description": "tta: Task Transfer Analysis of frozen representations "
            "(see also `tta plugins|cache|benchmark|rank|configs --help` and `tta --version`)"
        },
        args=args,
    )


def _checkpoint_hparams(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The hyper-parameters of a checkpoint, loaded with ``weights_only=True`` (one error if unreadable).

    Read once per file version: the config check and the weights-only preflight of one command share it.
    """
    stat = Path(path).stat()
    return dict(_read_hparams(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read_hparams(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    import pickle

    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needed = refused_global(err)
        raise TTAInputError(
            f"checkpoint {path} holds objects other than tensors and plain values (it needs {needed}): "
            "not loaded; use a checkpoint written by tta fit"
            if needed
            else f"checkpoint {path} cannot be read: it is truncated, corrupt or not a checkpoint; use "
            "another checkpoint of the fit"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise TTAInputError(
            f"checkpoint {path} cannot be read: it is empty, truncated or not a checkpoint ({detail}); "
            "use another checkpoint of the fit"
        ) from None
    if not isinstance(ckpt, dict):
        raise TTAInputError(f"checkpoint {path} is not a Lightning checkpoint (a {type(ckpt).__name__})")
    hparams = ckpt.get("hyper_parameters") or {}
    return dict(hparams) if isinstance(hparams, dict) else {}


def _backbone_name(spec: Any) -> str | None:
    """The saved-hyper-parameter form of a backbone spec (a name, or the class name of ``class_path``)."""
    if spec is None or isinstance(spec, str):
        return spec
    class_path = spec.get("class_path") if hasattr(spec, "get") else None
    return str(class_path).rsplit(".", 1)[-1] if class_path else None


def _weights_only(given: bool | None, ckpt_path: str | os.PathLike[str] | None) -> bool:
    """Checkpoints are loaded with ``weights_only=True`` only; an unreadable one is refused up front."""
    if given is False:
        raise TTAInputError(
            "--weights_only false is not supported: tta loads checkpoints with weights_only=True only "
            "(a checkpoint holding other objects could run code when loaded)"
        )
    named = str(ckpt_path) in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:")
    if ckpt_path and not named:
        if not Path(ckpt_path).exists():
            raise TTAInputError(
                f"checkpoint {ckpt_path} does not exist: pass the .ckpt file of a fit (tta fit writes it "
                "under <default_root_dir>/<name>/lightning_logs/version_N/checkpoints/; result.json names it)"
            )
        if Path(ckpt_path).is_dir():
            raise TTAInputError(f"checkpoint {ckpt_path} is a folder: pass the .ckpt file inside it")
        _checkpoint_hparams(ckpt_path)  # one line for a checkpoint that is not plain tensors and values
    return True


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[(.*?)\]\)"
)
_MISSING = re.compile(r'Missing key\(s\) in state_dict: "([^"]+)"')
_UNEXPECTED = re.compile(r'Unexpected key\(s\) in state_dict: "([^"]+)"')


@contextlib.contextmanager
def _misfit_as_one_line(ckpt_path: Any) -> Iterator[None]:
    """Within the block, torch's ``load_state_dict`` error for ``ckpt_path`` becomes one TTAInputError.

    Any other RuntimeError passes through untouched (with its cause chain, which find_tta_error walks).
    """
    try:
        yield
    except RuntimeError as err:
        if (misfit := _state_dict_error(err, ckpt_path)) is None:
            raise
        raise misfit from None


def _state_dict_error(err: RuntimeError, ckpt_path: Any) -> TTAInputError | None:
    """A checkpoint whose tensors do not fit the model, as one line naming the first misfit (else ``None``).

    torch's ``load_state_dict`` error lists every mismatching tensor over many lines under a traceback;
    the usual cause is a checkpoint of a fit with other tasks (another number of classes) or settings.
    """
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        return None
    fix = (
        "it is a checkpoint of a fit with other tasks or settings: pass the config it was fitted with "
        "(config.yaml in its run folder) or a checkpoint of this config's fit"
    )
    if m := _SIZE_MISMATCH.search(text):
        what = f"{m.group(1)} has shape ({m.group(2)}) in the checkpoint but ({m.group(3)}) in this model"
    elif m := _MISSING.search(text):
        what = f"it lacks {m.group(1)}, which this model has"
    elif m := _UNEXPECTED.search(text):
        what = f"it holds {m.group(1)}, which this model does not have"
    else:
        what = text.splitlines()[-1].strip()
    return TTAInputError(f"checkpoint {ckpt_path} does not fit this model: {what}; {fix}")


def _canonical_backbone(name: Any) -> str | None:
    """A registry name as its class name (``efficientnet_lite0``: ``EfficientNetLite0``), to compare."""
    if not isinstance(name, str):
        return None
    if "/" not in name:
        from tta.plugins import BACKBONES

        try:
            return getattr(BACKBONES.get(name), "__name__", name)
        except LookupError:
            return name
    return name


def _remove_if_empty(folder: str | None) -> None:
    """Remove ``folder`` (a run's log directory) if it holds no file at any depth; never anything else."""
    if not folder:
        return
    path = Path(folder)
    if not path.is_dir() or any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    path.rmdir()
