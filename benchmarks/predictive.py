"""Does the bound predict transferability? Every bound variant against every baseline, in one run.

For each pair of a benchmark config (default: the offline benchmark) this fits the analysis once per bound
variant — ``paper`` (the authors' bound, τ̂·W₁ in feature space, with the τ-penalised reference head the
paper uses) and ``logit`` (the logit-space odds transport, with an unpenalised reference head), as
:meth:`tta.fitting.AnalysisSettings.with_variant` sets them — through
the fit engine (:func:`tta.benchmark._runner.run_pair`, exactly what ``tta benchmark`` runs), runs every
baseline estimator once on the same features, and prints:

- per variant: the seconds of the bound stage per pair, how many bounds are vacuous (≥ H(p_T)), and a
  check that every bound covers the target CE of the classifier it certifies (the script exits 1 if not);
- per estimator: pooled τ_w and mean per-target τ_w (scipy.stats.weightedtau defaults, sign-aligned),
  each with a 95 % bootstrap interval, against the τ-probe accuracy and the standard-probe accuracy, on
  the exploration targets, on the held-out targets (``--held-out``), on the pairs of the backbones
  added after the exploration (``--new-backbones``: no score was chosen on them) and on all;
- beside the bounds, two scores derived from the same analysis — ``h3_acc[variant]``, the target accuracy
  of the transformed reference classifier h‴ the bound certifies, and ``h3_ce[variant]``, its target CE —
  and two oracle rows that score each pair by the *other* ground truth (``oracle:standard_probe_acc``,
  ``oracle:probe_acc``): how far the two truths agree bounds what any one score can reach against both.

Run (features must be cached or are extracted; the small CNN must be trained first, see the config):

    python benchmarks/predictive.py --json benchmarks/results/predictive.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HELD_OUT = ("digits", "mnist_0to4", "mnist_rot30", "digits_5to9")
TRUTHS = ("probe_acc", "standard_probe_acc")
DEFAULT_NEW = ("lite1_64", "lite2_64")


def _derived_rows(base_rows: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """Rows scoring each pair by h‴'s target accuracy and CE (from the bound's own analysis)."""
    out = []
    for row in base_rows:
        if row["estimator"] != "tta_bound":
            continue
        for name, key, higher in (("h3_acc", "transformed_acc", True), ("h3_ce", "transformed_ce", False)):
            value = float(row[key])
            out.append(
                {
                    **row,
                    "estimator": f"{name}[{variant}]",
                    "score": value,
                    "aligned_score": value if higher else -value,
                    "higher_is_better": higher,
                }
            )
    return out


def _oracle_rows(base_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows scoring each pair by one ground truth (to measure the other against it)."""
    return [
        {**row, "estimator": f"oracle:{key}", "score": row[key], "aligned_score": row[key], "seconds": 0.0}
        for row in base_rows
        if row["estimator"] == "tta_bound"
        for key in TRUTHS
    ]


def _settings(model: Any, variant: str) -> Any:
    """``model.with_variant(name)`` for ``name[:field=value,...]``, the fields set on its TransformConfig.

    ``logit:label_map_init=matching`` is the logit variant with the class-mean label map; values are read
    as JSON where they parse (numbers, booleans), else kept as strings.
    """
    name, _, overrides = variant.partition(":")
    settings = model.with_variant(name)
    fields = {}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    if fields:
        settings = dataclasses.replace(settings, transform=dataclasses.replace(settings.transform, **fields))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "benchmarks" / "offline.yaml"))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["paper", "logit"],
        help="bound variants, each NAME or NAME:field=value,... (transform fields), e.g. "
        "logit:label_map_init=matching",
    )
    parser.add_argument("--held-out", nargs="*", default=list(DEFAULT_HELD_OUT))
    parser.add_argument(
        "--new-backbones", nargs="*", default=list(DEFAULT_NEW), help="backbones added after exploring"
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--json", default=None, help="write every record and correlation here")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the config's)")
    args = parser.parse_args(argv)

    from tta.benchmark import (
        correlation_table,
        estimator_names,
        load_config,
        load_pair_features,
        pool_scores,
        run_pair,
        score_rows,
    )

    config = load_config(args.config)
    if args.cache_dir is not None:
        config.cache_dir = args.cache_dir
    estimators = estimator_names(config.estimators)
    features = {
        p.label: load_pair_features(p, config.cache_dir, config.extract_batch_size) for p in config.pairs
    }
    records: dict[str, list[dict[str, Any]]] = {}
    failures = []
    for i, variant in enumerate(args.variants):
        cfg = dataclasses.replace(config, model=_settings(config.model, variant))
        out = []
        for pair in config.pairs:
            rec, _, _ = run_pair(pair, cfg, estimators if i == 0 else [], features=features[pair.label])
            rec["pair_id"], rec["label"] = pair.label, pair.label
            certified = rec["ground_truth"]["transformed_ce"]
            if not rec["bound"] >= certified:
                failures.append(
                    f"{variant} {pair.label}: bound {rec['bound']:.6f} < certified CE {certified:.6f}"
                )
            out.append(rec)
        records[variant] = out
    base = records[args.variants[0]]
    pool_scores(base, estimators, lambda r: features[r["label"]].target_train, config.estimator_kwargs)

    rows = []
    by_variant = {variant: score_rows(records[variant]) for variant in args.variants}
    for variant, variant_rows in by_variant.items():
        for row in variant_rows:
            if row["estimator"] == "tta_bound":
                rows.append({**row, "estimator": f"tta_bound[{variant}]"})
            elif variant == args.variants[0]:
                rows.append(row)
        rows.extend(_derived_rows(variant_rows, variant))
    rows.extend(_oracle_rows(by_variant[args.variants[0]]))
    held, new = set(args.held_out), set(args.new_backbones)
    splits = {
        "explore": [r for r in rows if r["target"] not in held and r["backbone"] not in new],
        "held-out": [r for r in rows if r["target"] in held and r["backbone"] not in new],
        "new": [r for r in rows if r["backbone"] in new],
        "all": rows,
    }
    tables = {
        name: correlation_table(r, truths=TRUTHS, n_resamples=args.resamples) for name, r in splits.items()
    }

    print(
        f"{len(config.pairs)} pairs; held-out targets: {', '.join(sorted(held)) or 'none'}; backbones added "
        f"after exploring: {', '.join(sorted(new)) or 'none'}"
    )
    for variant in args.variants:
        recs = records[variant]
        secs = [r["timings"]["bound"] for r in recs]
        vacuous = sum(bool(r["vacuous"]) for r in recs)
        print(
            f"variant {variant:6s}: bound stage {sum(secs) / len(secs):.2f} s/pair (max {max(secs):.2f}); "
            f"vacuous on {vacuous}/{len(recs)} pairs; bound >= certified CE on "
            f"{sum(r['bound'] >= r['ground_truth']['transformed_ce'] for r in recs)}/{len(recs)}"
        )
    header = "estimator            " + "  ".join(f"{s:>33s}" for s in splits)
    for truth in TRUTHS:
        print(
            f"\nagainst {truth}: pooled τ_w [95% CI] | mean per-target τ_w  (n/a: score constant or missing)"
        )
        print(header)
        names = list(dict.fromkeys(r["estimator"] for r in rows))
        for name in names:
            cells = []
            for split in splits:
                row = next(
                    (
                        t
                        for t in tables[split]
                        if t["estimator"] == name and t["truth"] == truth and t["group"] == "pooled"
                    ),
                    None,
                )
                cells.append(_cell(row))
            print(f"{name:20s} " + "  ".join(cells))
    if args.json:
        payload = {
            "records": records,
            "correlations": tables,
            "held_out": sorted(held),
            "new_backbones": sorted(new),
            "variants": args.variants,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        print(f"\nwritten to {args.json}")
    for line in failures:
        print("INVALID:", line, file=sys.stderr)
    return 1 if failures else 0


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return " " * 33

    def fmt(v: float) -> str:
        return "  n/a" if not math.isfinite(v) else f"{v:+.2f}"

    low, high = row.get("weighted_tau_low", math.nan), row.get("weighted_tau_high", math.nan)
    return (
        f"{fmt(row['weighted_tau'])} [{fmt(low)},{fmt(high)}] | {fmt(row.get('mean_weighted_tau', math.nan))}"
    )


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"total {time.perf_counter() - start:.0f} s")
    raise SystemExit(code)
