"""Time and peak memory of one bound evaluation (W₁ term included) and of a fit, as the problem grows.

Each configuration runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, which sees
torch's CPU tensors, unlike ``tracemalloc``) is its own. Data: synthetic Gaussian class clusters
(K = 10 classes per task unless stated), standardised per task; the transform is the initial one
(identity feature map, optimal-transport label-map initialisation with smoothing 0.01, so the label map is
soft and every reference point carries mass in every target class — the hard case for the per-label
decomposition).

- ``eval``: ``evaluate_bound`` on ``n`` reference and ``n`` target points in dimension ``d`` with the
  chosen estimator (default ``subsample``: exact per class up to ``--max-points`` points per side, the
  mean of ``--replicates`` exact subsample solves beyond, with a 95% interval — the result then says it
  is an estimate and carries the interval).
- ``fit``: ``learn_transform`` for ``--fit-steps`` steps (batch 1000, default configuration, selection
  every 10 steps on all reference points, so that every class is in it) with K_S reference classes and
  10 target classes, d = 64.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/scaling.py --sizes 1000,5000 --dims 64,512
    OMP_NUM_THREADS=2 python benchmarks/scaling.py --sizes 100000 --dims 512 --no-fit
    OMP_NUM_THREADS=2 python benchmarks/scaling.py --no-eval --classes 10,100,1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def _head(pair: C.TaskPair) -> Any:
    from tta.heads import HeadConfig, fit_linear_head

    z, y = pair.source_train
    cfg = HeadConfig(tau=0.02, w_gp=1e4, steps=30, batch_size=512)
    head = fit_linear_head(z[:5000], y[:5000], pair.k_s, cfg, seed=0)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def _estimator(args: argparse.Namespace) -> Any:
    from tta.distances import create_distance

    if args.estimator == "subsample":
        return create_distance("subsample", max_points=args.max_points, replicates=args.replicates, seed=0)
    if args.estimator == "sinkhorn":
        return create_distance("sinkhorn", backend="auto")  # online KeOps on CUDA, tensorized on CPU
    return create_distance(args.estimator)


def run_eval(n: int, d: int, args: argparse.Namespace) -> dict[str, Any]:
    """One bound evaluation with n points per side in dimension d."""
    from tta.fitting import TransformConfig, evaluate_bound, initialise_transform
    from tta.transforms import TaskTransform

    k = 10
    started = time.perf_counter()
    pair = C.synthetic_pair(k, d, max(1, 2000 // k), n // k, seed=0)
    head = _head(pair)
    transform = TaskTransform(k, k, d)
    initialise_transform(transform, pair.source_train, pair.target_train, TransformConfig())
    if args.device != "cpu":
        pair, head, transform = (
            C.to_device(pair, args.device),
            head.to(args.device),
            transform.to(args.device),
        )
    setup_s = time.perf_counter() - started
    rss_before = C.peak_rss_gib()
    started, cpu = time.perf_counter(), time.process_time()
    res = evaluate_bound(transform, head, pair.source_test, pair.target_test, _estimator(args))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    dist = res["distance"]
    return {
        "kind": "eval",
        "n": n,
        "d": d,
        "estimator": repr(_estimator(args)),
        "seconds": seconds,
        "cpu_s": cpu,
        "setup_s": setup_s,
        "peak_rss_gib": C.peak_rss_gib(),
        "rss_before_eval_gib": rss_before,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device != "cpu" else None,
        "bound": res["bound"],
        "w1": res["w1"],
        "w1_is_estimate": bool(res.get("w1_is_estimate", False)),
        "w1_ci": res.get("w1_ci"),
        "bound_ci": res.get("bound_ci"),
        "distance_seconds": dist.get("seconds"),
        "path": dist.get("path"),
    }


def run_fit(k_s: int, args: argparse.Namespace) -> dict[str, Any]:
    """A short fit with k_s reference classes and 10 target classes (d = 64)."""
    from tta.distances import create_distance
    from tta.fitting import TransformConfig, initialise_transform, learn_transform
    from tta.transforms import TaskTransform

    d, k_t = 64, 10
    per = max(5, 5000 // k_s)
    pair = C.synthetic_pair(k_s, d, per, 2, seed=0, k_t=k_t)
    head = _head(pair)
    # the selection subset must hold every reference class: with K_S = 1000 take all reference points
    cfg = TransformConfig(
        steps=args.fit_steps, select_every=10, select_points=int(pair.source_train[0].shape[0])
    )
    transform = TaskTransform(k_s, k_t, d)
    initialise_transform(transform, pair.source_train, pair.target_train, cfg)
    started, cpu = time.perf_counter(), time.process_time()
    history = learn_transform(
        transform, head, pair.source_train, pair.target_train, create_distance("auto"), cfg
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "kind": "fit",
        "k_s": k_s,
        "k_t": k_t,
        "d": d,
        "n_source_train": int(pair.source_train[0].shape[0]),
        "steps": len(history),
        "seconds": seconds,
        "cpu_s": cpu,
        "s_per_step": seconds / max(1, len(history)),
        "peak_rss_gib": C.peak_rss_gib(),
        "final_selection_bound": min(
            (h["selection_bound"] for h in history if "selection_bound" in h), default=None
        ),
    }


def _child(spec: str, args: argparse.Namespace) -> None:
    kind, *vals = spec.split(":")
    torch.manual_seed(0)
    out = run_eval(int(vals[0]), int(vals[1]), args) if kind == "eval" else run_fit(int(vals[0]), args)
    print("RESULT " + json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000,20000,100000", help="points per side")
    parser.add_argument("--dims", default="64,512,2048", help="feature dimensions")
    parser.add_argument("--classes", default="10,100,1000", help="K_S of the fit benchmark")
    parser.add_argument("--estimator", default="subsample", help="subsample, auto, exact or sinkhorn")
    parser.add_argument("--max-points", type=int, default=2000, help="subsample: exact up to this per side")
    parser.add_argument("--replicates", type=int, default=5, help="subsample: replicates per problem")
    parser.add_argument("--fit-steps", type=int, default=20, help="steps of the fit benchmark")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (evaluation grid)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation grid")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit benchmark")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--json", default=None, help="append result lines (JSON) to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args)
        return 0

    print(f"machine: {C.machine()}", flush=True)
    specs = []
    if not args.no_eval:
        specs += [
            f"eval:{n}:{d}" for n in map(int, args.sizes.split(",")) for d in map(int, args.dims.split(","))
        ]
    if not args.no_fit:
        specs += [f"fit:{k}" for k in map(int, args.classes.split(","))]
    passthrough = [
        f"--estimator={args.estimator}",
        f"--max-points={args.max_points}",
        f"--replicates={args.replicates}",
        f"--fit-steps={args.fit_steps}",
        f"--device={args.device}",
    ]
    for spec in specs:
        cmd = [sys.executable, __file__, "--child", spec, *passthrough]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ)
        except subprocess.TimeoutExpired:
            print(f"{spec}: TIMEOUT after {args.timeout:.0f} s", flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(
                f"{spec}: FAILED (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True
            )
            continue
        r = json.loads(lines[-1][len("RESULT ") :])
        r["process_s"] = time.perf_counter() - started
        if r["kind"] == "eval":
            ci = (
                f"  ESTIMATE, W1 95% CI [{r['w1_ci'][0]:.4f}, {r['w1_ci'][1]:.4f}], bound CI "
                f"[{r['bound_ci'][0]:.4f}, {r['bound_ci'][1]:.4f}]"
                if r["w1_is_estimate"]
                else "  exact"
            )
            print(
                f"eval n={r['n']:>6} d={r['d']:>4}: {r['seconds']:8.1f} s ({r['cpu_s']:7.1f} CPU s)  "
                f"peak RSS {r['peak_rss_gib']:6.2f} GiB"
                f"  W1 {r['w1']:.4f}  bound {r['bound']:.4f}{ci}",
                flush=True,
            )
        else:
            print(
                f"fit K_S={r['k_s']:>5} (K_T={r['k_t']}, d={r['d']}, {r['n_source_train']} ref points): "
                f"{r['steps']} steps {r['seconds']:.1f} s, {r['cpu_s']:.1f} CPU s "
                f"({r['s_per_step']:.3f} s/step)  "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
