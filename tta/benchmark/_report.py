"""Benchmark outputs: the tidy score table, the correlation table, a JSON summary, Markdown and figures.

Files written by :func:`write_report` into the output directory:

- ``scores.csv`` (and ``scores.parquet`` when pyarrow is importable): tidy, one row per
  pair × estimator (the bound is the estimator ``tta_bound``), with the raw score, the sign-aligned
  score, status/reason and every ground-truth column;
- ``pairs.csv``: one row per pair: the bound, its three terms, the ground truth, stage timings;
- ``correlations.csv``: per estimator × ground truth × group (each target, and ``pooled``) the
  Pearson r, Kendall τ, weighted τ_w, rel@1 and rel@3 (see :mod:`tta.benchmark`); the pooled
  rows add the τ_w bootstrap interval (resampling pairs) and the mean per-target τ_w with its
  interval (resampling targets) and the number of targets averaged;
- ``summary.json``: the correlation table, timings, skipped/failed estimators, the conventions and
  the bootstrap settings;
- ``report.md`` with ``scatter_bound_vs_ce.png``, ``bound_decomposition.png`` and
  ``correlations.png``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tta._atomic import atomic_path
from tta.benchmark._metrics import (
    BOOTSTRAP_SEED,
    CONFIDENCE_LEVEL,
    N_RESAMPLES,
    correlations,
    mean_weighted_tau,
    weighted_tau_interval,
)
from tta.results import write_json_atomic

__all__ = [
    "BOUND",
    "CONVENTIONS",
    "TRUTHS",
    "bootstrap_settings",
    "correlation_table",
    "pair_rows",
    "score_rows",
    "summary_columns",
    "summary_rows",
    "write_csv",
    "write_report",
]

#: Name of the tta bound in the tables (lower is better; negated before correlation).
BOUND = "tta_bound"

#: Ground-truth columns: name -> (higher is better, description).
TRUTHS: dict[str, tuple[bool, str]] = {
    "probe_acc": (True, "target test accuracy of the gradient-penalised linear probe"),
    "probe_ce": (False, "target test CE of the gradient-penalised linear probe (negated)"),
    "standard_probe_acc": (True, "target test accuracy of the plain L2 linear probe"),
}

CONVENTIONS = (
    "Scores are sign-aligned before any correlation: a score where lower is better (the tta bound, an "
    "upper bound on the target cross-entropy) is negated, so a larger aligned score always predicts "
    "better transfer. Ground truths are oriented the same way (accuracy as is, cross-entropy negated). "
    "Pearson r and Kendall τ-b are scipy.stats.pearsonr / kendalltau; τ_w is "
    "scipy.stats.weightedtau(score, truth) with SciPy's defaults (hyperbolic weigher 1/(r+1), "
    "rank=True: the average of the weighings by score and by truth; top ranks count most). "
    "rel@k = best accuracy among the k top-scored candidates / best accuracy of the target; "
    "'pooled' correlations use every pair together, pooled rel@k is the mean over targets. "
    "The mean per-target τ_w (the literature's figure) averages τ_w over the targets where it is "
    "defined (at least 3 candidates). Intervals: percentile bootstrap (scipy.stats.bootstrap, "
    f"{CONFIDENCE_LEVEL:.0%} confidence, numpy default_rng seed {BOOTSTRAP_SEED}); the pooled τ_w "
    "resamples pairs, the mean per-target τ_w resamples targets; resamples where τ_w is undefined are "
    "left out. Fewer than 3 candidates or a constant score gives nan."
)


def bootstrap_settings(n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """The bootstrap settings recorded in ``summary.json`` (and stated in the report)."""
    return {
        "method": "percentile (scipy.stats.bootstrap)",
        "confidence_level": CONFIDENCE_LEVEL,
        "n_resamples": n_resamples,
        "seed": BOOTSTRAP_SEED,
        "weighted_tau_unit": "pairs (every (score, truth) pair of the estimator, all targets)",
        "mean_weighted_tau_unit": "targets (their per-target τ_w; targets with at least 3 candidates)",
    }


def _aligned(value: float | None, higher_is_better: bool) -> float:
    if value is None or not math.isfinite(value):
        return math.nan
    return value if higher_is_better else -value


def score_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tidy rows, one per pair × estimator (``tta_bound`` first), each with the pair's ground truth."""
    rows: list[dict[str, Any]] = []
    for r in records:
        base = {
            "pair_id": r["pair_id"],
            "backbone": r["backbone"],
            "reference": r["reference"],
            "target": r["target"],
        }
        truth = dict(r["ground_truth"])
        rows.append(
            {
                **base,
                "estimator": BOUND,
                "score": r["bound"],
                "aligned_score": _aligned(r["bound"], False),
                "higher_is_better": False,
                "status": "ok",
                "reason": "",
                "seconds": r["timings"]["bound"],
                **truth,
            }
        )
        for name, e in r["estimators"].items():
            hib = bool(e.get("higher_is_better", True))
            value = e.get("value") if e.get("status") == "ok" else None
            rows.append(
                {
                    **base,
                    "estimator": name,
                    "score": value if value is not None else math.nan,
                    "aligned_score": _aligned(value, hib),
                    "higher_is_better": hib,
                    "status": e.get("status", "ok"),
                    "reason": e.get("reason") or "",
                    "seconds": e.get("seconds", 0.0),
                    **truth,
                }
            )
    return rows


def pair_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One wide row per pair: ids, the bound and its terms, ground truth, stage timings, scores."""
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "pair_id": r["pair_id"],
            "backbone": r["backbone"],
            "reference": r["reference"],
            "target": r["target"],
            "bound": r["bound"],
            **{f"term_{k}": v for k, v in r["terms"].items()},
            "gap": r["gap"],
            **r["ground_truth"],
            **{f"seconds_{k}": v for k, v in r["timings"].items()},
        }
        for name, e in r["estimators"].items():
            row[f"score_{name}"] = e.get("value") if e.get("status") == "ok" else math.nan
        rows.append(row)
    return rows


def correlation_table(
    rows: Sequence[dict[str, Any]],
    truths: Iterable[str] | None = None,
    n_resamples: int = N_RESAMPLES,
) -> list[dict]:
    """Correlation metrics per estimator × truth × group (every target, then ``pooled``).

    The ``pooled`` rows also carry ``weighted_tau_low``/``_high`` (bootstrap over pairs) and
    ``mean_weighted_tau`` with ``_low``/``_high`` (bootstrap over targets) and ``_targets`` (how many
    targets were averaged); see :mod:`tta.benchmark`.

    Args:
        rows: Tidy rows with ``target``, ``estimator``, ``aligned_score`` and the truth columns.
        truths: Truth columns to use (default: those of :data:`TRUTHS` present in the rows); a column
            not in :data:`TRUTHS` is taken as higher-is-better.
        n_resamples: Bootstrap resamples per interval; 0 leaves the intervals ``nan``.
    """
    if not rows:
        return []
    truths = [t for t in (truths or TRUTHS) if t in rows[0]]
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    table = []
    for est in estimators:
        mine = [r for r in rows if r["estimator"] == est]
        for truth in truths:
            hib = TRUTHS.get(truth, (True, ""))[0]

            def truth_of(r: dict[str, Any], truth: str = truth, hib: bool = hib) -> float:
                return _aligned(float(r[truth]), hib)

            per_target = []
            for target in targets:
                group = [r for r in mine if r["target"] == target]
                m = correlations([r["aligned_score"] for r in group], [truth_of(r) for r in group])
                per_target.append(m)
                table.append({"estimator": est, "truth": truth, "group": target, **m})
            scores, truth_values = [r["aligned_score"] for r in mine], [truth_of(r) for r in mine]
            pooled = correlations(scores, truth_values)
            for k in ("rel@1", "rel@3"):
                values = [m[k] for m in per_target if math.isfinite(m[k])]
                pooled[k] = statistics.fmean(values) if values else math.nan
            low, high = weighted_tau_interval(scores, truth_values, n_resamples=n_resamples)
            pooled["weighted_tau_low"], pooled["weighted_tau_high"] = low, high
            pooled.update(mean_weighted_tau([m["weighted_tau"] for m in per_target], n_resamples=n_resamples))
            pooled["note"] = _undefined_note(scores)
            table.append({"estimator": est, "truth": truth, "group": "pooled", **pooled})
    return table


def _undefined_note(scores: Sequence[float]) -> str:
    """Why a score's correlations are undefined (``""`` when they are not)."""
    finite = [x for x in scores if x is not None and math.isfinite(x)]
    if len(finite) < 3:
        return f"only {len(finite)} scored pairs: no correlation"
    if max(finite) - min(finite) <= 1e-12 * max(1.0, abs(finite[0])):
        return "constant score: no correlation"
    return ""


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows as CSV (the union of keys, in first-seen order, as the header)."""
    header = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in header})
    return path


def _write_parquet(path: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    header = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in header}), path)
    return path


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def _cell(x: Any) -> str:
    """A Markdown table cell: ``|`` escaped (``H(Y_T|Y_S)`` broke the table), no line breaks."""
    return _fmt(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def scatter_figure(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bound vs actual target CE (probe and transformed classifier), with the y = x line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    bounds = [r["bound"] for r in records]
    probe = [r["ground_truth"]["probe_ce"] for r in records]
    h3 = [r["ground_truth"]["transformed_ce"] for r in records]
    ax.scatter(probe, bounds, label="τ-penalised probe CE", zorder=3)
    ax.scatter(h3, bounds, marker="x", label="transformed classifier h''' CE", zorder=3)
    lo = min([*bounds, *probe, *h3, 0.0])
    hi = max([*bounds, *probe, *h3]) * 1.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("actual target test CE (nats)")
    ax.set_ylabel("tta bound (nats)")
    ax.set_title("bound vs actual target CE\n(points above y = x are covered)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def decomposition_figure(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Stacked bars of the three terms per pair, with the probe's target CE as a marker."""
    plt = _plt()
    n = len(records)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2), 4.8))
    xs = list(range(n))
    bottom = [0.0] * n
    for key, label in (
        ("weighted_source_loss", "weighted source loss"),
        ("conditional_entropy", "H(Y_T|Y_S) label mismatch"),
        ("tau_w1", "τ·W₁ feature distance"),
    ):
        values = [r["terms"][key] for r in records]
        ax.bar(xs, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.plot(xs, [r["ground_truth"]["probe_ce"] for r in records], "k_", ms=14, mew=2, label="probe CE")
    ax.set_xticks(
        xs, [r["label"] if "label" in r else r["pair_id"] for r in records], rotation=70, ha="right"
    )
    ax.tick_params(axis="x", labelsize=6)
    ax.set_ylabel("nats")
    ax.set_title("bound decomposition per pair")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def correlation_figure(table: Sequence[dict[str, Any]], truth: str, path: Path) -> Path:
    """Pooled Pearson, Kendall τ and τ_w per estimator against one truth."""
    plt = _plt()
    pooled = [r for r in table if r["group"] == "pooled" and r["truth"] == truth]
    names = [r["estimator"] for r in pooled]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4.0))
    width = 0.27
    for i, key in enumerate(("pearson", "kendall_tau", "weighted_tau")):
        ax.bar([x + (i - 1) * width for x in range(len(names))], [r[key] for r in pooled], width, label=key)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"correlation with {truth}")
    ax.set_title(f"pooled correlations with {truth} (aligned scores)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def interval_text(value: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.812 [0.601, 0.934]"``; the bracket is left out when the interval is undefined."""
    text = _fmt(value, digits)
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def summary_columns(level: str) -> list[str]:
    """Headers of the pooled-correlation table (``level``: the intervals' confidence, ``"95%"``)."""
    return [
        "estimator",
        "n",
        "Pearson r",
        "Kendall τ",
        f"pooled τ_w [{level} CI]",
        f"mean per-target τ_w [{level} CI]",
        "targets",
        "rel@1",
        "rel@3",
    ]


def summary_rows(table: Sequence[dict[str, Any]], truth: str) -> list[list[Any]]:
    """The pooled rows of :func:`correlation_table` for one truth, in :func:`summary_columns` order."""
    rows = []
    for r in table:
        if r["group"] != "pooled" or r["truth"] != truth:
            continue
        note = r.get("note")
        rows.append(
            [
                f"{r['estimator']} ({note})" if note else r["estimator"],
                r["n"],
                r["pearson"],
                r["kendall_tau"],
                interval_text(r["weighted_tau"], r["weighted_tau_low"], r["weighted_tau_high"]),
                interval_text(
                    r["mean_weighted_tau"], r["mean_weighted_tau_low"], r["mean_weighted_tau_high"]
                ),
                r["mean_weighted_tau_targets"],
                r["rel@1"],
                r["rel@3"],
            ]
        )
    return rows


def write_report(
    out_dir: str | Path,
    records: Sequence[dict[str, Any]] | None = None,
    rows: Sequence[dict[str, Any]] | None = None,
    title: str = "benchmark",
    extra: dict[str, Any] | None = None,
    truths: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, Any]:
    """Write every output of a benchmark (from pair records, or from tidy rows of an external table).

    Args:
        out_dir: Output directory.
        records: Pair records of :func:`tta.benchmark.run_benchmark` (harness mode).
        rows: Tidy rows (external-table mode: ``model``/``backbone``, ``target``, ``estimator``,
            ``aligned_score`` and truth columns); ignored when ``records`` is given.
        title: Report title.
        extra: Extra entries of the JSON summary (failures, resumed pairs, ...).
        truths: Ground-truth columns (default: those of :data:`TRUTHS` present in the rows).
        n_resamples: Bootstrap resamples per τ_w interval (0: no intervals).

    Returns:
        The summary (also written as ``summary.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if records is not None:
        rows = score_rows(records)
        files["pairs_csv"] = str(write_csv(out / "pairs.csv", pair_rows(records)))
    rows = list(rows or [])
    files["scores_csv"] = str(write_csv(out / "scores.csv", rows))
    parquet = _write_parquet(out / "scores.parquet", rows) if rows else None
    if parquet is not None:
        files["scores_parquet"] = str(parquet)
    truth_names = list(truths) if truths is not None else [t for t in TRUTHS if rows and t in rows[0]]
    table = correlation_table(rows, truth_names, n_resamples=n_resamples)
    files["correlations_csv"] = str(write_csv(out / "correlations.csv", table))
    primary = truth_names[0] if truth_names else None
    figures: dict[str, str] = {}
    if records:
        figures["scatter"] = str(scatter_figure(records, out / "scatter_bound_vs_ce.png"))
        figures["decomposition"] = str(decomposition_figure(records, out / "bound_decomposition.png"))
    if primary and table:
        figures["correlations"] = str(correlation_figure(table, primary, out / "correlations.png"))
    skipped = sorted(
        {(r["estimator"], r["status"], r["reason"]) for r in rows if r.get("status") not in ("ok", None)}
    )
    timings: dict[str, float] = {}
    for r in records or []:
        for k, v in r["timings"].items():
            timings[k] = timings.get(k, 0.0) + float(v)
    est_seconds: dict[str, float] = {}
    for r in rows:
        est_seconds[r["estimator"]] = est_seconds.get(r["estimator"], 0.0) + float(r.get("seconds") or 0.0)
    summary: dict[str, Any] = {
        "title": title,
        "conventions": CONVENTIONS,
        "bootstrap": bootstrap_settings(n_resamples),
        "num_pairs": len(records)
        if records is not None
        else len({(r.get("backbone"), r["target"]) for r in rows}),
        "targets": list(dict.fromkeys(r["target"] for r in rows)),
        "truths": {t: TRUTHS.get(t, (True, "external ground truth"))[1] for t in truth_names},
        "correlations": table,
        "timings_total_seconds": timings,
        "estimator_seconds": est_seconds,
        "not_ok": [{"estimator": e, "status": s, "reason": why} for e, s, why in skipped],
        "files": files,
        "figures": figures,
        **(extra or {}),
    }
    files["summary_json"] = str(out / "summary.json")
    files["report_md"] = str(out / "report.md")
    write_json_atomic(out / "summary.json", summary)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(summary, records, table, truth_names))
    return summary


def _markdown(
    summary: dict[str, Any],
    records: Sequence[dict[str, Any]] | None,
    table: Sequence[dict[str, Any]],
    truths: Sequence[str],
) -> str:
    parts = [f"# {summary['title']}", "", f"**Conventions.** {summary['conventions']}", ""]
    boot = summary["bootstrap"]
    level = f"{boot['confidence_level']:.0%}"
    header = summary_columns(level)
    for truth in truths:
        parts += [
            f"## Correlations with `{truth}`: pooled and mean per target",
            "",
            f"Ground truth: {summary['truths'].get(truth, truth)}. Intervals: {level} percentile bootstrap "
            f"({boot['n_resamples']} resamples, seed {boot['seed']}) over pairs for the pooled τ_w and over "
            "targets (those with at least 3 candidates, counted in `targets`) for the mean per-target τ_w.",
            "",
            _md_table(header, summary_rows(table, truth)),
            "",
        ]
    if truths:
        truth = truths[0]
        groups = [g for g in dict.fromkeys(r["group"] for r in table) if g != "pooled"]
        estimators = list(dict.fromkeys(r["estimator"] for r in table))
        parts += [f"## Weighted τ_w per target (`{truth}`)", ""]
        rows = []
        for est in estimators:
            row: list[Any] = [est]
            for g in groups:
                hit = [r for r in table if r["estimator"] == est and r["group"] == g and r["truth"] == truth]
                row.append(hit[0]["weighted_tau"] if hit else math.nan)
            rows.append(row)
        parts += [_md_table(["estimator", *groups], rows), ""]
    if records:
        parts += [
            "## Pairs",
            "",
            _md_table(
                [
                    "pair",
                    "bound",
                    "src loss",
                    "H(Y_T|Y_S)",
                    "distribution",
                    "probe CE",
                    "probe acc",
                    "h''' CE",
                ],
                [
                    [
                        r.get("label", r["pair_id"]),
                        r["bound"],
                        r["terms"]["weighted_source_loss"],
                        r["terms"]["conditional_entropy"],
                        r["terms"]["tau_w1"],
                        r["ground_truth"]["probe_ce"],
                        r["ground_truth"]["probe_acc"],
                        r["ground_truth"]["transformed_ce"],
                    ]
                    for r in records
                ],
            ),
            "",
            "## Timings (seconds, all pairs)",
            "",
            _md_table(["stage", "seconds"], list(summary["timings_total_seconds"].items())),
            "",
            "![bound vs actual CE](scatter_bound_vs_ce.png)",
            "",
            "![bound decomposition](bound_decomposition.png)",
            "",
        ]
    if summary["estimator_seconds"]:
        parts += [
            "## Estimator cost (seconds, all pairs)",
            "",
            _md_table(["estimator", "seconds"], list(summary["estimator_seconds"].items())),
            "",
        ]
    if truths:
        parts += ["![correlations](correlations.png)", ""]
    if summary["not_ok"]:
        parts += ["## Skipped or failed estimators", ""]
        parts += [f"- `{x['estimator']}` ({x['status']}): {x['reason']}" for x in summary["not_ok"]]
        parts += [""]
    for key in ("failed", "resumed", "computed"):
        if summary.get(key):
            value = summary[key]
            parts += [f"**{key}**: {len(value)} pair(s)" + (f": {value}" if key == "failed" else ""), ""]
    return "\n".join(parts)
