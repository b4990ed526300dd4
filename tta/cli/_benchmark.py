"""``tta benchmark``: run a benchmark config, or evaluate an external score table.

Examples::

    tta benchmark --config configs/benchmarks/offline.yaml
    tta benchmark --config configs/benchmarks/offline.yaml --output runs/bench --estimators logme leep
    tta benchmark --external published.csv --truth accuracy --lower-is-better bound
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tta.cli._main import error_line

__all__ = ["build_parser", "main"]

# tta.benchmark._metrics.N_RESAMPLES, written out so that `--help` does not import the package (torch)
_DEFAULT_RESAMPLES = 1000

DESCRIPTION = """\
Compare the tta bound with the baseline transferability estimators against ground truth.

With --config: for every (backbone, reference task, target task) pair of the config, extract (or read
cached) features, fit and test the tta bound exactly as `tta fit` does, run every selected estimator
on the target training features, and take the gradient-penalised linear probe's target test CE and
accuracy as ground truth. Finished pairs are stored under OUTPUT/pairs/ and reused by a rerun, so a
killed benchmark restarts where it stopped. SIGINT (Ctrl+C) or SIGTERM stops it cleanly (exit code
130): the finished pairs are kept, and rerunning the same command resumes.

With --external: evaluate a CSV of estimator scores and ground-truth accuracies (one row per
model x target; e.g. a published table plus ImageNet top-1 for the static ranker).

Outputs (OUTPUT/): scores.csv (tidy; scores.parquet when pyarrow is installed), pairs.csv,
correlations.csv, summary.json, report.md and PNG figures. Scores where lower is better (the bound)
are sign-aligned before correlation; tau_w is scipy.stats.weightedtau(score, truth) with its defaults.
Beside the pooled tau_w (all pairs together) the mean per-target tau_w (tau_w per target, averaged
over targets with at least 3 candidates) is reported; both with 95% percentile bootstrap intervals
(scipy.stats.bootstrap, seed 0) resampling pairs for the pooled and targets for the mean.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tta benchmark``."""
    parser = argparse.ArgumentParser(
        prog="tta benchmark", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="benchmark YAML (see configs/benchmarks/offline.yaml)")
    source.add_argument(
        "--external", type=Path, help="CSV of scores and ground truth, one row per model×target"
    )
    parser.add_argument("--output", type=Path, help="output directory (default: the config's output_dir)")
    parser.add_argument("--estimators", nargs="+", help="estimators to run (default: the config's, or all)")
    parser.add_argument(
        "--cache-dir", help="feature cache directory (default: the config's, or ~/.cache/tta)"
    )
    parser.add_argument("--limit", type=int, help="run only the first N pairs (a quick subset)")
    parser.add_argument(
        "--on-error", choices=("record", "raise"), help="a failing pair: record it and go on, or stop"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--truth", help="--external: ground-truth column (default: accuracy/acc/...)")
    parser.add_argument(
        "--lower-is-better",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="--external: score columns to negate",
    )
    parser.add_argument("--title", help="report title")
    parser.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=_DEFAULT_RESAMPLES,
        metavar="N",
        help=f"bootstrap resamples per tau_w interval (default {_DEFAULT_RESAMPLES}; 0: no intervals)",
    )
    return parser


def _print_table(summary: dict, truth: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from tta.benchmark._report import _fmt, summary_columns, summary_rows

    boot = summary["bootstrap"]
    level = f"{boot['confidence_level']:.0%}"
    table = Table(
        title=f"pooled correlations with {truth} (sign-aligned; τ_w = weightedtau(score, truth))",
        caption=f"[{level} CI]: percentile bootstrap, {boot['n_resamples']} resamples, seed {boot['seed']}; "
        "pooled τ_w resamples pairs, mean per-target τ_w resamples targets (those with ≥ 3 candidates)",
    )
    for col in summary_columns(level):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for row in summary_rows(summary["correlations"], truth):
        table.add_row(*(_fmt(v) for v in row))
    Console().print(table)


def main(argv: list[str]) -> int:
    """Run ``tta benchmark``; returns the exit status (1 when a pair failed or the input is invalid)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap_resamples < 0:
        parser.error(f"--bootstrap-resamples must be >= 0, got {args.bootstrap_resamples}")
    from rich.console import Console

    console = Console(stderr=True)
    from tta.benchmark._report import write_report

    if args.external is not None:
        from tta.benchmark._external import read_external

        try:
            rows, info = read_external(args.external, args.truth, args.lower_is_better)
        except (FileNotFoundError, ValueError) as err:
            error_line(err)
            return 2
        out = args.output or Path("runs/benchmark") / args.external.stem
        summary = write_report(
            out,
            rows=rows,
            title=args.title or f"external table {args.external.name}",
            extra={"external": info},
            truths=[info["truth"]],
            n_resamples=args.bootstrap_resamples,
        )
        _print_table(summary, info["truth"])
        console.print(f"report written to [bold]{out / 'report.md'}[/bold]")
        return 0

    from tta.benchmark._config import BenchmarkConfigError, load_config
    from tta.benchmark._runner import run_benchmark
    from tta.plugins import PluginNotFoundError

    try:
        config = load_config(args.config)
    except (FileNotFoundError, BenchmarkConfigError) as err:
        error_line(err)
        return 2
    if args.output is not None:
        config.output_dir = str(args.output)
    if args.estimators is not None:
        config.estimators = list(args.estimators)
    if args.cache_dir is not None:
        config.cache_dir = args.cache_dir
    if args.on_error is not None:
        config.on_error = args.on_error
    if args.limit is not None:
        config.pairs = config.pairs[: max(args.limit, 0)]
    from tta._preflight import check_writable_dir
    from tta.errors import TTAInputError

    try:  # before any pair runs, not after an hour of them
        check_writable_dir(
            config.output_dir, "the benchmark's output (--output)", fix="pass --output <folder>"
        )
    except TTAInputError as err:
        error_line(err)
        return 2
    try:
        run = run_benchmark(config, progress=not args.no_progress and sys.stderr.isatty())
    except PluginNotFoundError as err:
        error_line(err)
        return 2
    from tta.errors import TTAInterrupted
    from tta.modules._interrupt import Interrupted, SignalGuard

    try:
        with SignalGuard():
            summary = write_report(
                config.output_dir,
                records=run.records,
                title=args.title or config.name,
                extra={
                    "config": config.source,
                    "computed": run.computed,
                    "resumed": run.resumed,
                    "failed": run.failed,
                    "estimators": run.estimators,
                },
                n_resamples=args.bootstrap_resamples,
            )
    except Interrupted as err:
        raise TTAInterrupted(
            f"interrupted by {err.signal_name} while writing the report; all {len(run.records)} finished "
            f"pairs are stored in {Path(config.output_dir) / 'pairs'}; rerun the same command to write it "
            "(no pair is recomputed)"
        ) from None
    if run.records:
        _print_table(summary, "probe_acc")
    console.print(
        f"{len(run.computed)} pair(s) computed, {len(run.resumed)} reused from earlier runs, "
        f"{len(run.failed)} failed; report written to [bold]{Path(config.output_dir) / 'report.md'}[/bold]"
    )
    for label, message in run.failed.items():
        console.print(f"[red]failed:[/red] {label}: {message}  (rerun to retry it)")
    return 1 if run.failed else 0
