#!/usr/bin/env bash
# CUDA smoke benchmark: the same scripts as on CPU, on the GPU (online KeOps Sinkhorn backend).
# Prints CUDA timings; exits 0 with a clear message when no CUDA device is present.
#   bash benchmarks/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_smoke: no CUDA device (torch.cuda.is_available() is False); nothing to time. Exiting 0."
    exit 0
fi
"$PY" -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

echo "== KeOps on this CUDA set-up (checked in a child process: a broken KeOps segfaults)"
"$PY" -c "from tta._keops_check import keops_status; works, why = keops_status('cuda'); print('KeOps works' if works else f'KeOps FAILS: {why} -> auto uses tensorized')"
echo "== Sinkhorn W1 on CUDA: auto (online KeOps where it works) vs tensorized (n per side, d = 512, per-label, K = 10)"
"$PY" - <<'PYEOF'
import time, torch
import torch.nn.functional as F
from tta.distances import SinkhornDistance
for n in (1000, 10000, 100000):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, 512, device="cuda", generator=g)
    y = torch.randn(n, 512, device="cuda", generator=g) + 0.1
    lab = torch.arange(n, device="cuda") % 10
    oh = F.one_hot(lab, 10).float()
    for backend in ("auto", "tensorized"):
        if backend == "tensorized" and n > 20000:
            continue
        est = SinkhornDistance(backend=backend)
        est(x[:200], y[:200], None, None, oh[:200], oh[:200], 1e6)  # compile / warm up
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        w = est(x, y, None, None, oh, oh, 1e6)
        torch.cuda.synchronize()
        backend = f"{backend}->{est.diagnostics['backend']}"
        print(f"n={n:>6} {backend:>22}: {time.perf_counter() - t:7.2f} s  W1={float(w):.4f}  "
              f"peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
PYEOF

echo "== bound evaluation grid on CUDA (Sinkhorn, online backend)"
"$PY" benchmarks/scaling.py --device cuda --estimator sinkhorn --sizes 1000,20000,100000 --dims 512 --no-fit --timeout 300
echo "== speed vs the authors' algorithm on CUDA (quick: faithful extrapolated)"
"$PY" benchmarks/speed_vs_reference.py --device cuda --quick --faithful-steps 20 --cases d512k100 --variants default
