"""How do the ``logit`` bound's fit settings change its ranking? One run, every split of the benchmark.

For each setting (``base`` or ``field=value,...`` of :class:`tta.fitting.TransformConfig`, applied on top
of ``AnalysisSettings.with_variant("logit")`` of the benchmark config) this fits the bound on every pair
of the offline benchmark (the features must be cached: run ``benchmarks/predictive.py`` or
``tta benchmark`` first) and prints, per split (``explore``, ``held-out``, ``new``, ``all``, as in
``benchmarks/predictive.py``), the pooled τ_w and the mean per-target τ_w of the bound (sign-aligned,
``scipy.stats.weightedtau`` defaults) against the τ-probe accuracy and the standard-probe accuracy of
the same fit, how many bounds are vacuous, and how many cover the CE of the classifier they certify.

``--select-held-out F`` is an experiment, not a tta option: the transform phase learns on a stratified
``1 - F`` of each task's training split and scores the states it keeps (best-state selection) on the
other ``F``, instead of on the points it learned from.

    python benchmarks/logit_settings.py base label_map_init=bound logit_weight_decay=1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import weightedtau

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = {"digits", "mnist_0to4", "mnist_rot30", "digits_5to9"}
NEW = {"lite1_64", "lite2_64"}


def _split(row: dict[str, Any]) -> str:
    if row["backbone"] in NEW:
        return "new"
    return "held-out" if row["target"] in HELD_OUT else "explore"


def _taus(rows: list[dict[str, Any]], truth: str) -> tuple[float, float]:
    """Pooled τ_w and mean per-target τ_w (targets with ≥ 3 candidates, neither side constant)."""
    if len(rows) < 3:
        return math.nan, math.nan
    pooled = float(weightedtau([-r["bound"] for r in rows], [r[truth] for r in rows])[0])
    per = []
    for target in sorted({r["target"] for r in rows}):
        group = [r for r in rows if r["target"] == target]
        score, value = np.array([-r["bound"] for r in group]), np.array([r[truth] for r in group])
        if len(group) >= 3 and np.ptp(score) > 0 and np.ptp(value) > 0:
            per.append(float(weightedtau(score, value)[0]))
    return pooled, float(np.mean(per)) if per else math.nan


def _fields(spec: str) -> dict[str, Any]:
    if spec == "base":
        return {}
    out: dict[str, Any] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def _hold_out_selection(fraction: float) -> None:
    """Patch the fit engine: learn on 1 - fraction of each training split, select on the rest."""
    import tta.fitting._analysis as analysis
    from tta.data._tasks import stratified_split
    from tta.fitting._selection import BestTransform

    start = analysis.Analysis.start

    def patched(self: Any, features: Any) -> None:
        start(self, features)
        fitter = self.transform_phase
        (z_s, y_s), (z_t, y_t) = fitter.source, fitter.target
        s_fit, s_sel = stratified_split(y_s, fraction, self.seed + 18)
        t_fit, t_sel = stratified_split(y_t, fraction, self.seed + 17)
        fitter.source, fitter.target = (z_s[s_fit], y_s[s_fit]), (z_t[t_fit], y_t[t_fit])
        if fitter.best is not None:
            fitter.best = BestTransform(
                fitter.head,
                (z_s[s_sel], y_s[s_sel]),
                (z_t[t_sel], y_t[t_sel]),
                fitter.distance,
                fitter.config,
                self.seed,
            )

    analysis.Analysis.start = patched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", help="base, or field=value,... of TransformConfig")
    parser.add_argument("--config", default=str(ROOT / "configs" / "benchmarks" / "offline.yaml"))
    parser.add_argument("--select-held-out", type=float, default=None, metavar="F")
    args = parser.parse_args(argv)

    from tta.benchmark import load_config, load_pair_features
    from tta.fitting import analyze_features

    if args.select_held_out is not None:
        _hold_out_selection(args.select_held_out)
    config = load_config(args.config)
    features = {
        p.label: load_pair_features(p, config.cache_dir, config.extract_batch_size) for p in config.pairs
    }
    print(
        f"{len(config.pairs)} pairs; held-out targets {sorted(HELD_OUT)}; new backbones {sorted(NEW)}"
        + (f"; selection on a held-out {args.select_held_out:.0%}" if args.select_held_out else ""),
        flush=True,
    )
    print("setting: split  τ-probe acc pooled / per-target | standard-probe acc pooled / per-target")
    for spec in args.settings:
        base = config.model.with_variant("logit")
        settings = dataclasses.replace(base, transform=dataclasses.replace(base.transform, **_fields(spec)))
        rows, started = [], time.perf_counter()
        for pair in config.pairs:
            _, result = analyze_features(features[pair.label], settings, seed=config.seed)
            rows.append(
                {
                    "backbone": pair.backbone_name,
                    "target": pair.target_name,
                    "bound": result.bound,
                    "probe_acc": result.probe.target_acc,
                    "standard_probe_acc": result.standard_probe.target_acc,
                    "vacuous": bool(result.report.vacuous),
                    "valid": result.bound >= result.report.transformed_target_ce,
                }
            )
        seconds = time.perf_counter() - started
        mean = float(np.mean([r["bound"] for r in rows]))
        print(
            f"{spec}: vacuous {sum(r['vacuous'] for r in rows)}/{len(rows)}, bound >= certified CE "
            f"{sum(r['valid'] for r in rows)}/{len(rows)}, mean bound {mean:.3f}, "
            f"{seconds / len(rows):.1f} s/pair",
            flush=True,
        )
        for split in ("explore", "held-out", "new", "all"):
            group = [r for r in rows if split == "all" or _split(r) == split]
            a, b = _taus(group, "probe_acc"), _taus(group, "standard_probe_acc")
            print(f"  {split:9s} {a[0]:+.2f} / {a[1]:+.2f} | {b[0]:+.2f} / {b[1]:+.2f}   (n={len(group)})")
        if not all(r["valid"] for r in rows):
            print("INVALID: a bound below the CE it certifies")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
