"""Writing a run's record: versions, config hash, the JSON file (atomically), and its table."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tta.results._types import AnalysisResult

__all__ = ["TERM_ADVICE", "config_hash", "format_result", "reading", "versions", "write_json_atomic"]

_PACKAGES = (
    "task-transfer-analysis",
    "torch",
    "lightning",
    "timm",
    "geomloss",
    "pykeops",
    "pot",
    "torchmetrics",
    "numpy",
)


def versions() -> dict[str, str | None]:
    """Versions of Python, the packages that shape the numbers and the plugins (``plugin:<name>``).

    A package that is not installed has version ``None``.
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from tta.plugins import plugin_distributions

    for dist in plugin_distributions():
        out[f"plugin:{dist.name}"] = dist.version
    return out


def config_hash(config: Any) -> str:
    """Short SHA-256 of a canonical JSON form of ``config`` (dicts sorted, non-JSON values as strings)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file in the same folder, then rename).

    A crash or a full disk leaves either the previous file or none, never a truncated one, and no temporary
    file.

    Returns:
        The path written.

    Raises:
        tta.errors.TTAError: ``disk full while writing ...`` when the disk or quota is full, or (a
            :class:`~tta.errors.TTAInputError`) when the folder cannot be written.
    """
    from tta._atomic import atomic_path
    from tta._preflight import io_error

    path = Path(path)
    fix = f"write {path.name} to another folder (e.g. --trainer.default_root_dir for a run's result)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, tmp.open("w") as fh:
            json.dump(_clean(payload), fh, indent=2, allow_nan=False, default=str)
            fh.write("\n")
    except BaseException as err:
        friendly = io_error(err, path, "the JSON record", fix)
        if friendly is not None:
            raise friendly from err
        raise
    return path


def format_result(result: AnalysisResult) -> Any:
    """A rich table of the bound, its terms and the actual target losses."""
    from rich.table import Table

    report = result.report
    table = Table(title=f"Task transfer analysis (test splits, {report.variant} bound)", show_lines=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("weighted source loss  Σ D_s L̄_s", report.weighted_source_loss),
        ("label mismatch  H(Y_T|Y_S)", report.conditional_entropy),
        ("τ̂", report.tau),
        ("W₁(transformed reference, target)", report.w1),
        (
            "distribution mismatch  τ̂·W₁"
            if report.variant == "paper"
            else "distribution mismatch  logit-space transport",
            report.tau_w1,
        ),
        ("bound (sum)", result.bound),
        ("trivial level H(p_T) (predicting the target prior)", report.trivial_level),
        ("target CE of transformed classifier h'''", result.transformed_classifier.target_ce),
        ("target accuracy of h'''", result.transformed_classifier.target_acc),
        ("target CE of τ-penalised probe (transferability)", result.probe.target_ce),
        ("target accuracy of τ-penalised probe", result.probe.target_acc),
        ("target CE of standard probe", result.standard_probe.target_ce),
        ("target accuracy of standard probe", result.standard_probe.target_acc),
        ("gap  bound − probe CE", result.gap),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:.4f}")
    if report.vacuous:
        table.add_row(
            "[bold red]vacuous[/bold red]", "[red]bound ≥ trivial level: it certifies nothing[/red]"
        )
    if report.cond_A is not None:
        table.add_row("cond(A)", f"{report.cond_A:.3g}")
    stopped = result.numerics.stopped_ill_conditioned_at
    if stopped is not None:
        table.add_row("transform stopped (ill-conditioned A) after step", str(stopped))
    for message in result.warnings:  # numerical warnings of the run (NumericalWarning, solvers)
        table.add_row("[bold yellow]warning[/bold yellow]", f"[yellow]{message}[/yellow]")
    return table


#: Per term of the bound: its name in a sentence, and what to act on when it is the largest.
TERM_ADVICE: dict[str, tuple[str, str]] = {
    "weighted_source_loss": (
        "the reference loss",
        "the reference classifier h_S is weak on its own task: train it longer or less constrained "
        "(model.source_head.steps, .tau), or use a reference task this backbone separates better",
    ),
    "conditional_entropy": (
        "the label mismatch H(Y_T|Y_S)",
        "the target's classes do not map one-to-one onto the reference's: use a reference task whose "
        "classes correspond to the target's",
    ),
    "tau_w1": (
        "the distribution mismatch",
        "the target features sit far from the transformed reference: give the transform more steps "
        "(model.transform.steps) or use a reference task closer to the target",
    ),
}


def reading(result: AnalysisResult) -> str:
    """A plain reading of a result: the bound against the trivial level and the probes; what to act on."""
    report = result.report
    terms = {k: max(float(getattr(report, k)), 0.0) for k in TERM_ADVICE}
    key = max(terms, key=lambda k: terms[k])
    share = terms[key] / result.bound if result.bound > 0 else 0.0
    name, advice = TERM_ADVICE[key]
    if report.trivial_level is None:
        verdict = f"The bound is {result.bound:.3f} nats"
    elif report.vacuous:
        verdict = (
            f"The bound {result.bound:.3f} nats is above the trivial level {report.trivial_level:.3f} "
            "(predicting the target prior), so it certifies nothing (vacuous)"
        )
    else:
        verdict = (
            f"The bound certifies a target cross-entropy of at most {result.bound:.3f} nats for the "
            f"transformed classifier, below the trivial level {report.trivial_level:.3f}"
        )
    probes = (
        f"the τ-penalised probe reaches {result.probe.target_ce:.3f} nats / {result.probe.target_acc:.1%} "
        f"accuracy and the standard probe {result.standard_probe.target_ce:.3f} / "
        f"{result.standard_probe.target_acc:.1%}"
    )
    largest = f"The largest term is {name} ({terms[key]:.3f}, {share:.0%} of the bound)"
    return f"{verdict}; {probes}. {largest}: {advice}."
