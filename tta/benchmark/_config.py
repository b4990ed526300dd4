"""The benchmark configuration: backbones, tasks, the pairs (or a zoo × targets grid), fit settings.

A benchmark is a YAML file (see ``configs/benchmarks/offline.yaml``)::

    name: offline
    output_dir: runs/benchmark/offline
    backbones:                      # named candidates: registry name, constructor args, metadata
      lite0_112: {name: efficientnet_lite0, init_args: {image_size: 112},
                  metadata: {imagenet_top1: 75.1}}
    tasks:                          # named tasks: the fields of tta.data.TaskSpec
      fmnist: {dataset: fashion_mnist, train_per_class: 60, test_per_class: 30}
      mnist:  {dataset: mnist_5k, train_per_class: 60, test_per_class: 30}
    pairs:                          # explicit (backbone, reference, target) triples ...
      - {backbone: lite0_112, reference: fmnist, target: mnist}
    grid:                           # ... and/or a zoo × references × targets grid
      backbones: [lite0_112]
      references: [fmnist]
      targets: [mnist]
    model: {source_head: {steps: 200}, transform: {steps: 100}}   # TaskTransferAnalysis arguments
    estimators: all                 # or a list of names registered in tta.plugins.ESTIMATORS

Everything is validated when loaded, and each problem is reported with the field that holds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tta.data._tasks import TaskSpec
from tta.errors import TTAInputError
from tta.fitting import AnalysisSettings, EvalConfig, TransformConfig
from tta.heads import HeadConfig

__all__ = [
    "BackboneSpec",
    "BenchmarkConfig",
    "BenchmarkConfigError",
    "ModelSettings",
    "PairSpec",
    "load_config",
]


class BenchmarkConfigError(TTAInputError):
    """A benchmark configuration is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class BackboneSpec:
    """A candidate backbone.

    Args:
        name: Registry name in :data:`tta.plugins.BACKBONES` (``efficientnet_lite0``, ``timm/<model>``).
        init_args: Constructor keyword arguments (``image_size: 112``).
        metadata: Facts about the model for metadata estimators, e.g. ``imagenet_top1`` for ``static``.
    """

    name: str
    init_args: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """What identifies the features it produces (the metadata does not)."""
        return {"name": self.name, "init_args": dict(sorted(self.init_args.items()))}


@dataclass(frozen=True)
class PairSpec:
    """One (backbone, reference task, target task) triple of the benchmark, each with its name."""

    backbone_name: str
    backbone: BackboneSpec
    reference_name: str
    reference: TaskSpec
    target_name: str
    target: TaskSpec

    @property
    def label(self) -> str:
        """``backbone · reference → target``."""
        return f"{self.backbone_name} · {self.reference_name} → {self.target_name}"


#: The fit settings of every pair: the arguments of :class:`tta.modules.TaskTransferAnalysis`.
ModelSettings = AnalysisSettings


@dataclass
class BenchmarkConfig:
    """A whole benchmark.

    Args:
        pairs: The expanded (backbone, reference, target) triples, in order, without duplicates.
        model: Fit settings shared by every pair.
        estimators: Estimator names to run (registry names); ``None`` means every registered one.
        estimator_kwargs: Extra keyword arguments per estimator (``{knn: {k: 5}}``).
        name: Name of the benchmark (report title).
        output_dir: Where the pair records and the reports go.
        cache_dir: Feature cache directory (``None``: the default cache).
        seed: Seed of every fit.
        extract_batch_size: Images per backbone forward pass.
        fine_tune: End-to-end fine-tuning as a stronger ground truth (not available: refused).
        on_error: ``record`` (a failing pair is recorded and skipped; a rerun retries it) or ``raise``.
        source: The file the configuration came from.
    """

    pairs: list[PairSpec]
    model: ModelSettings = field(default_factory=ModelSettings)
    estimators: list[str] | None = None
    estimator_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "benchmark"
    output_dir: str = "runs/benchmark"
    cache_dir: str | None = None
    seed: int = 0
    extract_batch_size: int = 64
    fine_tune: bool = False
    on_error: str = "record"
    source: str | None = None


_TOP_KEYS = {
    "name",
    "output_dir",
    "cache_dir",
    "seed",
    "extract_batch_size",
    "backbones",
    "tasks",
    "pairs",
    "grid",
    "model",
    "estimators",
    "estimator_kwargs",
    "fine_tune",
    "on_error",
}


def _dataclass_from(cls: type, value: Any, where: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise BenchmarkConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {value!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise BenchmarkConfigError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has {sorted(names)}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as err:
        raise BenchmarkConfigError(f"{where}: {err}") from err


def parse_model_settings(value: Any, where: str = "model") -> ModelSettings:
    """:class:`ModelSettings` from a mapping (missing heads/configs take their defaults)."""
    if value is None:
        return ModelSettings()
    if not isinstance(value, dict):
        raise BenchmarkConfigError(f"{where} must be a mapping, got {value!r}")
    known = {f.name for f in dataclasses.fields(ModelSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise BenchmarkConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    out = ModelSettings()
    for key in ("source_head", "probe", "standard_probe"):
        if key in value:
            base = dataclasses.asdict(getattr(out, key))
            setattr(out, key, _dataclass_from(HeadConfig, {**base, **(value[key] or {})}, f"{where}.{key}"))
    if "transform" in value:
        out.transform = _dataclass_from(TransformConfig, value["transform"], f"{where}.transform")
    if "evaluation" in value:
        out.evaluation = _dataclass_from(EvalConfig, value["evaluation"], f"{where}.evaluation")
    for key in ("distance", "eval_distance"):
        if key in value:
            if not isinstance(value[key], str):
                raise BenchmarkConfigError(f"{where}.{key} must be a registry name, got {value[key]!r}")
            setattr(out, key, value[key])
    return out


def parse_backbone(value: Any, where: str) -> BackboneSpec:
    """A :class:`BackboneSpec` from a registry name or a mapping ``{name, init_args, metadata}``."""
    if isinstance(value, str):
        return BackboneSpec(value)
    if not isinstance(value, dict) or "name" not in value:
        raise BenchmarkConfigError(
            f"{where} must be a registry name or a mapping with 'name' (and optional 'init_args', "
            f"'metadata'), got {value!r}"
        )
    spec = _dataclass_from(BackboneSpec, {k: v for k, v in value.items()}, where)
    for key in ("init_args", "metadata"):
        if not isinstance(getattr(spec, key), dict):
            raise BenchmarkConfigError(f"{where}.{key} must be a mapping, got {getattr(spec, key)!r}")
    return spec


def parse_task(value: Any, where: str) -> TaskSpec:
    """A :class:`TaskSpec` from a dataset name or a mapping of its fields."""
    if isinstance(value, str):
        return TaskSpec(value)
    return _dataclass_from(TaskSpec, value, where)


def _task_name(spec: TaskSpec) -> str:
    cls = "" if spec.classes is None else "[" + ",".join(str(c) for c in spec.classes) + "]"
    return f"{spec.dataset}{cls}"


def _resolve(ref: Any, table: dict[str, Any], kind: str, where: str, parse: Any) -> tuple[str, Any]:
    """A named entry of ``table`` or an inline definition (named after itself)."""
    if isinstance(ref, str) and ref in table:
        return ref, table[ref]
    spec = parse(ref, where)
    if kind == "task":
        return _task_name(spec), spec
    name = spec.name
    if spec.init_args:
        name += "(" + ",".join(f"{k}={v}" for k, v in sorted(spec.init_args.items())) + ")"
    return name, spec


def config_from_dict(raw: dict[str, Any], source: str | None = None) -> BenchmarkConfig:
    """Validate and expand a benchmark configuration given as a mapping (the parsed YAML).

    Raises:
        BenchmarkConfigError: Naming the first malformed field and how to fix it.
    """
    if not isinstance(raw, dict):
        raise BenchmarkConfigError(f"a benchmark config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise BenchmarkConfigError(f"unknown top-level field(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    backbones = {str(k): parse_backbone(v, f"backbones.{k}") for k, v in (raw.get("backbones") or {}).items()}
    tasks = {str(k): parse_task(v, f"tasks.{k}") for k, v in (raw.get("tasks") or {}).items()}
    triples: list[tuple[Any, Any, Any, str]] = []
    for i, item in enumerate(raw.get("pairs") or []):
        if not isinstance(item, dict) or set(item) != {"backbone", "reference", "target"}:
            raise BenchmarkConfigError(
                f"pairs[{i}] must be a mapping with exactly 'backbone', 'reference' and 'target', "
                f"got {item!r}"
            )
        triples.append((item["backbone"], item["reference"], item["target"], f"pairs[{i}]"))
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict) or set(grid) - {"backbones", "references", "targets"}:
            raise BenchmarkConfigError(
                f"grid must be a mapping with 'backbones', 'references' and 'targets' lists, got {grid!r}"
            )
        for key in ("backbones", "references", "targets"):
            if not isinstance(grid.get(key), list) or not grid[key]:
                raise BenchmarkConfigError(f"grid.{key} must be a non-empty list")
        for t in grid["targets"]:
            for b in grid["backbones"]:
                for r in grid["references"]:
                    triples.append((b, r, t, "grid"))
    if not triples:
        raise BenchmarkConfigError("the config defines no pairs: give a 'pairs' list or a 'grid'")
    pairs: list[PairSpec] = []
    seen: set[tuple[str, str, str]] = set()
    for b, r, t, where in triples:
        b_name, b_spec = _resolve(b, backbones, "backbone", f"{where}.backbone", parse_backbone)
        r_name, r_spec = _resolve(r, tasks, "task", f"{where}.reference", parse_task)
        t_name, t_spec = _resolve(t, tasks, "task", f"{where}.target", parse_task)
        if (b_name, r_name, t_name) in seen:
            continue
        seen.add((b_name, r_name, t_name))
        pairs.append(PairSpec(b_name, b_spec, r_name, r_spec, t_name, t_spec))
    estimators = raw.get("estimators", "all")
    if estimators in (None, "all"):
        names: list[str] | None = None
    elif isinstance(estimators, list) and all(isinstance(e, str) for e in estimators):
        names = list(estimators)
    else:
        raise BenchmarkConfigError(f"estimators must be 'all' or a list of names, got {estimators!r}")
    kwargs = raw.get("estimator_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, dict) for v in kwargs.values()):
        raise BenchmarkConfigError(
            "estimator_kwargs must map estimator names to keyword mappings, e.g. {knn: {k: 5}}"
        )
    if raw.get("fine_tune"):
        raise BenchmarkConfigError(
            "fine_tune: true is not supported by this harness (no end-to-end fine-tuning offline); the "
            "ground truth is the gradient-penalised linear probe's target test CE and accuracy. "
            "Remove fine_tune or set it to false."
        )
    on_error = raw.get("on_error", "record")
    if on_error not in ("record", "raise"):
        raise BenchmarkConfigError(f"on_error must be 'record' or 'raise', got {on_error!r}")
    return BenchmarkConfig(
        pairs=pairs,
        model=parse_model_settings(raw.get("model")),
        estimators=names,
        estimator_kwargs={str(k): dict(v) for k, v in kwargs.items()},
        name=str(raw.get("name", "benchmark")),
        output_dir=str(raw.get("output_dir", "runs/benchmark")),
        cache_dir=raw.get("cache_dir"),
        seed=int(raw.get("seed", 0)),
        extract_batch_size=int(raw.get("extract_batch_size", 64)),
        fine_tune=False,
        on_error=on_error,
        source=source,
    )


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read, validate and expand a benchmark YAML file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        BenchmarkConfigError: On a malformed config, naming the field.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BenchmarkConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return config_from_dict(raw, source=str(path))
    except BenchmarkConfigError as err:
        raise BenchmarkConfigError(f"{path}: {err}") from err
