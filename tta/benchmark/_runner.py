"""The benchmark loop: for each pair, features → tta bound → estimators → ground truth; resumable.

Per pair (:func:`run_pair`):

1. **features**: the reference and target splits through the frozen backbone, from the feature cache
   when present (:meth:`tta.data.TaskPairDataModule.load_features`), standardised per task;
2. **bound**: the fit engine ``tta fit`` runs (:func:`tta.fitting.analyze_features`: the same
   :meth:`tta.fitting.Analysis.step` calls, without Lightning), so the bound is exactly what ``tta fit``
   reports for the same settings;
3. **estimators**: every selected estimator on the target *training* features (the same standardised
   features the bound sees). ``probs`` estimators (LEEP, NCE) get the softmax of the reference
   classifier :math:`h_S` on those features; ``pair`` estimators (OTCE) get the reference training
   features too; ``metadata`` ones (static) the backbone's metadata; ``pool`` ones (NCTI, ETran) are
   computed after the loop, per target, over the distinct backbones of that target
   (:func:`pool_scores`). An estimator that cannot run is recorded as ``skipped`` with the reason;
   one that fails, as ``error`` with the message — never dropped silently;
4. **ground truth**: the gradient-penalised target probe's test CE and accuracy (and the standard L2
   probe's), trained inside the same fit.

Each finished pair is written atomically to ``<output_dir>/pairs/<pair_id>.json``; the id hashes
everything that shapes its numbers, so a rerun reuses finished pairs and computes only the rest.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tta.benchmark._config import BackboneSpec, BenchmarkConfig, ModelSettings, PairSpec
from tta.results import AnalysisResult, config_hash, versions, write_json_atomic

__all__ = [
    "FIT_STAGES",
    "BenchmarkRun",
    "estimator_names",
    "fit_bound",
    "load_pair_features",
    "pair_id",
    "pool_scores",
    "run_benchmark",
    "run_estimators",
    "run_pair",
]

log = logging.getLogger(__name__)

#: Per-pair stages whose wall-clock seconds every record carries.
FIT_STAGES = ("features", "bound", "estimators", "ground_truth")
RECORD_VERSION = 2  # 2: trivial level and vacuity; the fixed SFDA/GBC (earlier records are recomputed)


def estimator_names(selected: Iterable[str] | None = None) -> list[str]:
    """The estimators to run: ``selected`` (checked against the registry) or every registered one."""
    import tta.estimators  # noqa: F401  (registers the built-ins)
    from tta.plugins import ESTIMATORS

    available = list(ESTIMATORS.names())
    if selected is None:
        return available
    names = list(selected)
    for name in names:
        ESTIMATORS.get(name)  # raises PluginNotFoundError with close matches
    return names


def pair_id(pair: PairSpec, config: BenchmarkConfig, estimators: list[str]) -> str:
    """A file-name-safe id: the pair's names plus a hash of everything that shapes its numbers."""
    payload = {
        "version": RECORD_VERSION,
        "backbone": pair.backbone.key(),
        "metadata": pair.backbone.metadata,
        "reference": asdict(pair.reference),
        "target": asdict(pair.target),
        "model": config.model.as_dict(),
        "seed": config.seed,
        "estimators": sorted(estimators),
        "estimator_kwargs": config.estimator_kwargs,
    }
    slug = re.sub(
        r"[^A-Za-z0-9_.-]+", "-", f"{pair.backbone_name}__{pair.reference_name}__{pair.target_name}"
    )
    return f"{slug.strip('-')[:80]}__{config_hash(payload)[:10]}"


# ---------------------------------------------------------------------------------------------- stages
_BACKBONES: dict[str, Any] = {}


def _backbone(spec: BackboneSpec) -> Any:
    from tta.backbones import create_backbone

    key = config_hash(spec.key())
    if key not in _BACKBONES:
        _BACKBONES.clear()  # keep one backbone in memory at a time
        _BACKBONES[key] = create_backbone(spec.name, **spec.init_args).eval()
    return _BACKBONES[key]


def load_pair_features(
    pair: PairSpec, cache_dir: str | None = None, extract_batch_size: int = 64, use_cache: bool = True
) -> Any:
    """The standardised :class:`~tta.modules.FeaturePair` of a pair (cached extraction)."""
    from tta.modules._datamodule import TaskPairDataModule

    module = TaskPairDataModule(
        pair.reference,
        pair.target,
        cache_dir=cache_dir,
        use_cache=use_cache,
        extract_batch_size=extract_batch_size,
    )
    return module.load_features(_backbone(pair.backbone))


def fit_bound(features: Any, settings: ModelSettings, seed: int) -> tuple[Any, AnalysisResult]:
    """Fit and evaluate the analysis on precomputed features: the engine ``tta fit`` runs, without Lightning.

    Args:
        features: A :class:`~tta.modules.FeaturePair`.
        settings: The fit settings (heads, transform, evaluation, distances).
        seed: Seed of the fit.

    Returns:
        The fitted :class:`tta.fitting.Analysis` and its :class:`~tta.results.AnalysisResult`.
    """
    from tta.fitting import analyze_features

    return analyze_features(features, settings, seed)


def source_probs(model: Any, z: torch.Tensor) -> torch.Tensor:
    """Softmax of the fitted reference classifier :math:`h_S` on features ``z`` (``(n, K_S)``)."""
    with torch.no_grad():
        return torch.softmax(model.source_head(z), dim=-1).double()


def run_estimators(
    names: list[str],
    features: Any,
    model: Any,
    metadata: dict[str, Any],
    kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every estimator of ``names`` on one pair; pool-relative ones are marked for :func:`pool_scores`.

    Returns:
        ``name -> {value, status, reason, seconds, higher_is_better, inputs}`` with ``status`` one of
        ``ok``, ``skipped`` (cannot apply; ``reason`` says why), ``error`` (raised; ``reason`` holds the
        message) or ``pool`` (computed later across the target's candidates).
    """
    from tta.estimators import describe
    from tta.plugins import ESTIMATORS

    kwargs = kwargs or {}
    z_t, y_t = features.target_train
    z_s, y_s = features.source_train
    out: dict[str, dict[str, Any]] = {}
    probs: torch.Tensor | None = None
    for name in names:
        entry: dict[str, Any] = {"value": None, "status": "ok", "reason": None, "seconds": 0.0}
        out[name] = entry
        try:
            desc = describe(name)
        except LookupError as err:
            entry.update(status="skipped", reason=f"no descriptor: {err}")
            continue
        entry["higher_is_better"] = bool(desc.higher_is_better)
        entry["inputs"] = desc.inputs
        extra = kwargs.get(name, {})
        fn = ESTIMATORS.get(name)
        started = time.perf_counter()
        try:
            if desc.inputs == "features":
                value = fn(features=z_t, labels=y_t, **extra)
            elif desc.inputs == "probs":
                if model is None or getattr(model, "source_head", None) is None:
                    entry.update(status="skipped", reason="needs the source classifier h_S, none was fitted")
                    continue
                if probs is None:
                    probs = source_probs(model, z_t)
                value = fn(probs=probs, labels=y_t, **extra)
            elif desc.inputs == "pair":
                value = fn(
                    source_features=z_s, source_labels=y_s, target_features=z_t, target_labels=y_t, **extra
                )
            elif desc.inputs == "metadata":
                if not metadata:
                    entry.update(
                        status="skipped",
                        reason="the backbone has no metadata (give backbones.<name>.metadata, "
                        "e.g. imagenet_top1)",
                    )
                    continue
                try:
                    value = fn(metadata=metadata, **extra)
                except ValueError as err:
                    entry.update(status="skipped", reason=str(err))
                    continue
            elif desc.inputs == "pool":
                entry.update(status="pool", reason="pool-relative: computed across the target's backbones")
                continue
            else:  # pragma: no cover - the descriptor validates its kind
                entry.update(status="skipped", reason=f"unknown input kind {desc.inputs!r}")
                continue
            value = float(value)
            if not math.isfinite(value):
                entry.update(status="error", reason=f"non-finite score {value}")
            entry["value"] = value
        except Exception as err:
            entry.update(status="error", reason=f"{type(err).__name__}: {err}")
        finally:
            entry["seconds"] = time.perf_counter() - started
    return out


def _ground_truth(result: AnalysisResult) -> dict[str, float]:
    return {
        "probe_ce": result.probe.target_ce,
        "probe_acc": result.probe.target_acc,
        "standard_probe_ce": result.standard_probe.target_ce,
        "standard_probe_acc": result.standard_probe.target_acc,
        "transformed_ce": result.transformed_classifier.target_ce,
        "transformed_acc": result.transformed_classifier.target_acc,
    }


def run_pair(
    pair: PairSpec,
    config: BenchmarkConfig,
    estimators: list[str],
    features: Any | None = None,
    relabel: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], Any, Any]:
    """Compute one pair: features, bound, estimators, ground truth.

    Args:
        pair: The pair.
        config: The benchmark (fit settings, seed, cache).
        estimators: Estimator names to run on it.
        features: Precomputed features (skips extraction).
        relabel: Optional hook mapping the features to features with other target labels (label-free
            ranking: pseudo-labels) and a note recorded under ``label_free``.

    Returns:
        ``(record, features, fitted module)``.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if features is None:
        features = load_pair_features(pair, config.cache_dir, config.extract_batch_size)
    timings["features"] = time.perf_counter() - started
    note: dict[str, Any] | None = None
    if relabel is not None:
        features, note = relabel(features)
    t0 = time.perf_counter()
    model, result = fit_bound(features, config.model, config.seed)
    fit_seconds = time.perf_counter() - t0
    truth_seconds = float(result.timings.get("probe", 0.0) + result.timings.get("standard_probe", 0.0))
    timings["bound"] = fit_seconds - truth_seconds
    timings["ground_truth"] = truth_seconds
    t0 = time.perf_counter()
    scores = run_estimators(estimators, features, model, pair.backbone.metadata, config.estimator_kwargs)
    timings["estimators"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "status": "done",
        "backbone": pair.backbone_name,
        "reference": pair.reference_name,
        "target": pair.target_name,
        "backbone_spec": asdict(pair.backbone),
        "reference_spec": asdict(pair.reference),
        "target_spec": asdict(pair.target),
        "variant": result.report.variant,
        "bound": result.bound,
        "trivial_level": result.report.trivial_level,
        "vacuous": result.report.vacuous,
        "terms": result.report.terms,
        "ground_truth": _ground_truth(result),
        "gap": result.gap,
        "bound_covers_probe_exactly": result.bound_covers_probe_exactly,
        "estimators": scores,
        "timings": timings,
        "fit_timings": {k: v for k, v in result.timings.items() if isinstance(v, (int, float))},
        "data": {k: v for k, v in result.data.items() if k != "cache_hits"},
        "cache_hits": features.cache_hits,
        "seed": config.seed,
    }
    if note is not None:
        record["label_free"] = note
    return record, features, model


# ---------------------------------------------------------------------------------------------- pool
def pool_scores(
    records: list[dict[str, Any]],
    estimators: list[str],
    target_features: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]],
    kwargs: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Fill in the pool-relative estimators of ``records``, per target, in place.

    For each target, the candidates are its distinct backbones (pairs that differ only in the reference
    task share the backbone's features, hence the score). A target with fewer than two backbones, or
    whose backbones disagree on the target labels, gets ``skipped`` with the reason.

    Args:
        records: Finished pair records.
        estimators: Names to consider (only those of kind ``pool`` are computed).
        target_features: Record -> its standardised target training ``(features, labels)``.
        kwargs: Extra keyword arguments per estimator.
    """
    from tta.estimators import describe
    from tta.plugins import ESTIMATORS

    kwargs = kwargs or {}
    pool = [n for n in estimators if any(r["estimators"].get(n, {}).get("status") == "pool" for r in records)]
    if not pool:
        return
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_target.setdefault(r["target"], []).append(r)
    for target, group in by_target.items():
        backbones = list(dict.fromkeys(r["backbone"] for r in group))
        if len(backbones) < 2:
            for r in group:
                for name in pool:
                    r["estimators"][name].update(
                        status="skipped",
                        reason=f"pool-relative: target {target} has {len(backbones)} backbone, "
                        "needs at least 2",
                    )
            continue
        first = {b: next(r for r in group if r["backbone"] == b) for b in backbones}
        feats = {b: target_features(r) for b, r in first.items()}
        labels = feats[backbones[0]][1]
        if any(not torch.equal(feats[b][1], labels) for b in backbones):
            for r in group:
                for name in pool:
                    r["estimators"][name].update(
                        status="skipped", reason="pool-relative: the backbones' target labels differ"
                    )
            continue
        for name in pool:
            started = time.perf_counter()
            try:
                values = ESTIMATORS.get(name)(
                    features=[feats[b][0] for b in backbones], labels=labels, **kwargs.get(name, {})
                )
                by_backbone = dict(zip(backbones, map(float, values)))
                status, reason = "ok", f"pool of {len(backbones)} backbones"
            except Exception as err:
                by_backbone, status, reason = {}, "error", f"{type(err).__name__}: {err}"
            seconds = time.perf_counter() - started
            for r in group:
                r["estimators"][name].update(
                    value=by_backbone.get(r["backbone"]),
                    status=status,
                    reason=reason,
                    seconds=seconds / len(backbones),
                    higher_is_better=bool(describe(name).higher_is_better),
                )


# ---------------------------------------------------------------------------------------------- loop
@dataclass
class BenchmarkRun:
    """What :func:`run_benchmark` returns.

    Attributes:
        records: One record per finished pair, in config order.
        computed: Ids of the pairs computed by this run.
        resumed: Ids of the pairs read back from earlier runs.
        failed: ``pair label -> error message`` of pairs that raised (not stored; a rerun retries them).
        estimators: The estimator names run.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    estimators: list[str] = field(default_factory=list)


#: What a stored pair record must hold to be reused (a record missing any is recomputed).
_RECORD_FIELDS = {
    "backbone": str,
    "reference": str,
    "target": str,
    "bound": (int, float),
    "terms": dict,
    "ground_truth": dict,
    "estimators": dict,
    "timings": dict,
}


def _load_record(path: Path) -> dict[str, Any] | None:
    """A finished pair record of this tta, or ``None`` (then the pair is recomputed and the file replaced).

    A file that is not JSON, not an object, of another record version, unfinished, or missing a field
    (a stub, a list, a record cut by hand) is never an error: the pair is simply computed again, with
    a warning naming the file when it is not merely of an older version.
    """
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("pair record %s is not readable JSON: the pair is computed again", path)
        return None
    if not isinstance(record, dict):
        log.warning("pair record %s is not a JSON object: the pair is computed again", path)
        return None
    if record.get("status") != "done" or record.get("record_version") != RECORD_VERSION:
        return None
    bad = [k for k, kind in _RECORD_FIELDS.items() if not isinstance(record.get(k), kind)]
    if bad:
        log.warning(
            "pair record %s lacks %s: the pair is computed again", path, ", ".join(f"'{k}'" for k in bad)
        )
        return None
    return record


def run_benchmark(config: BenchmarkConfig, progress: bool = True) -> BenchmarkRun:
    """Run (or resume) every pair of ``config``, then the pool-relative estimators.

    Finished pairs are read back from ``<output_dir>/pairs/`` instead of being recomputed. A pair that
    raises is recorded in :attr:`BenchmarkRun.failed` and skipped (``on_error: record``) or re-raised
    (``on_error: raise``); either way the pairs finished before it stay stored.

    SIGINT or SIGTERM stops the run at once (in the main thread): the finished pairs stay stored (each
    written atomically), the pair in progress is dropped, and :class:`~tta.errors.TTAInterrupted` says how
    many pairs are done; a rerun resumes (it redoes the interrupted pair).
    """
    from tta.errors import TTAInterrupted
    from tta.modules._interrupt import Interrupted, SignalGuard

    estimators = estimator_names(config.estimators)
    out_dir = Path(config.output_dir) / "pairs"
    out_dir.mkdir(parents=True, exist_ok=True)
    run = BenchmarkRun(estimators=estimators)
    try:
        with SignalGuard():
            _run_pairs(config, estimators, out_dir, run, progress)
    except Interrupted as err:
        total, done = len(config.pairs), len(run.records)
        position = done + len(run.failed)  # the pair in progress
        if position < total:
            where = f"during pair {position + 1}/{total} ({config.pairs[position].label})"
        else:
            where = "after the last pair, while scoring the pool-relative estimators"
        raise TTAInterrupted(
            f"interrupted by {err.signal_name} {where}; {done} of {total} pairs are finished and stored in "
            f"{out_dir}; rerun the same command to resume (finished pairs are reused"
            f"{', the interrupted one is redone' if position < total else ''})"
        ) from None
    return run


def _run_pairs(
    config: BenchmarkConfig, estimators: list[str], out_dir: Path, run: BenchmarkRun, progress: bool
) -> None:
    """The loop of :func:`run_benchmark`: every pair into ``run``, then the pool-relative estimators."""
    features_of: dict[str, Any] = {}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]benchmark[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        disable=not progress,
    )
    with bar:
        task = bar.add_task("", total=len(config.pairs))
        for pair in config.pairs:
            pid = pair_id(pair, config, estimators)
            path = out_dir / f"{pid}.json"
            bar.update(task, description=pair.label)
            record = _load_record(path) if path.exists() else None
            if record is not None:
                run.resumed.append(pid)
            else:
                # A pair's own work (extraction, fits) shows Lightning's progress on the same console,
                # and rich allows one live display at a time: pause this one meanwhile.
                bar.stop()
                try:
                    record, features, _ = run_pair(pair, config, estimators)
                except Exception as err:
                    run.failed[pair.label] = f"{type(err).__name__}: {err}"
                    log.error("pair %s failed: %s", pair.label, err)
                    if config.on_error == "raise":
                        raise
                    record = None
                finally:
                    bar.start()
                if record is None:
                    bar.advance(task)
                    continue
                record["pair_id"] = pid
                record["versions"] = versions()
                write_json_atomic(path, record)
                features_of[pid] = features.target_train
                run.computed.append(pid)
            record["pair_id"] = pid
            record["label"] = pair.label
            run.records.append(record)
            bar.advance(task)

    pairs_by_id = {pair_id(p, config, estimators): p for p in config.pairs}

    def target_features(record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pid = record["pair_id"]
        if pid not in features_of:
            pair = pairs_by_id[pid]
            features_of[pid] = load_pair_features(
                pair, config.cache_dir, config.extract_batch_size
            ).target_train
        return features_of[pid]

    pool_scores(run.records, estimators, target_features, config.estimator_kwargs)
