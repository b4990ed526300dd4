#!/usr/bin/env bash
# Set up tta's virtual environment: bash scripts/setup.sh [VENV_DIR]   (default: .venv)
#
# - creates VENV_DIR with `python3 -m venv` (Python >= 3.10; set PYTHON=... to choose the interpreter),
# - installs torch 2.14.1 + torchvision 0.29.1 first, then the project in editable mode with the extras
#   offline-weights, text, test and docs, pinned by constraints.txt,
# - installs the example plugin plugins/tta-example-plugin in editable mode (--no-deps),
# - installs Debian's dataset-fashion-mnist when its files are missing (as root; otherwise prints a hint).
#
# Idempotent: a re-run with unchanged pyproject.toml / constraints.txt / this script only checks the
# installed versions and returns in about a second. TTA_SETUP_FORCE=1 reinstalls anyway;
# TTA_SETUP_SKIP_APT=1 skips the dataset step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
EXTRAS="offline-weights,text,test,docs"
FASHION_DIR=/usr/share/datasets/fashion-mnist
STAMP_NAME=.tta-setup-stamp

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
TIMINGS=()
timed() { # timed LABEL CMD ARGS...: run CMD, print and record its wall time; keeps CMD's exit status
    local label=$1 start rc=0 secs
    shift
    start=$(now)
    log "$label ..."
    "$@" || rc=$?
    secs=$(elapsed "$start" "$(now)")
    TIMINGS+=("$(printf '%-44s %7s s' "$label" "$secs")")
    if ((rc != 0)); then
        log "$label: FAILED (exit $rc) after $secs s"
        return "$rc"
    fi
    log "$label: done in $secs s"
}
T0=$(now)

# ---------------------------------------------------------------- interpreter
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python >= 3.10 or set PYTHON=/path/to/python3"
check_version() { # check_version PYTHON_EXE WHAT
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "tta needs Python >= 3.10, but $2 is $("$1" -c 'import sys; print(sys.version.split()[0])') ($1); set PYTHON=/path/to/python3.10+ (or remove $VENV)"
}
check_version "$PYTHON" "'$PYTHON'"

# ---------------------------------------------------------------- dataset (Debian package)
fashion_mnist_present() {
    local f
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [[ -f "$FASHION_DIR/$f.gz" || -f "$FASHION_DIR/$f" ]] || return 1
    done
}
install_fashion_mnist() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q dataset-fashion-mnist
}
if [[ "${TTA_SETUP_SKIP_APT:-0}" == 1 ]]; then
    log "skipping the Fashion-MNIST check (TTA_SETUP_SKIP_APT=1)"
elif fashion_mnist_present; then
    log "Fashion-MNIST found in $FASHION_DIR"
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    timed "apt-get install dataset-fashion-mnist" install_fashion_mnist
    fashion_mnist_present || die "dataset-fashion-mnist installed, but its files are not in $FASHION_DIR"
else
    log "hint: Fashion-MNIST is missing from $FASHION_DIR; the demo and some tests need it."
    log "      install it with: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
    log "      (continuing without it)"
fi

# ---------------------------------------------------------------- virtual environment
if [[ ! -x "$VENV/bin/python" ]]; then
    [[ -e "$VENV" && -n "$(ls -A "$VENV" 2>/dev/null)" ]] \
        && die "$VENV exists but is not a virtual environment (no $VENV/bin/python); remove it or pass another VENV_DIR"
    timed "python3 -m venv $VENV" "$PYTHON" -m venv "$VENV" \
        || die "could not create a venv; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"
fi
VENV_ABS="$(cd "$VENV" && pwd)"
VPY="$VENV_ABS/bin/python"
check_version "$VPY" "the venv's Python"

# Everything that decides what gets installed; a change means a reinstall.
stamp_value() {
    {
        "$VPY" -c 'import sys; print(sys.version)'
        printf '%s\n' "$ROOT" "${TORCH_PINS[@]}" "$EXTRAS"
        cat pyproject.toml constraints.txt scripts/setup.sh
        cat plugins/tta-example-plugin/pyproject.toml
    } | sha256sum | cut -d' ' -f1
}
# Cheap check (no torch import): pinned versions present, tta importable from this checkout, script there.
installed_ok() {
    [[ -x "$VENV_ABS/bin/tta" ]] || return 1
    (cd / && "$VPY" - "$ROOT" "${TORCH_PINS[@]}" <<'PY'
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

root, pins = Path(sys.argv[1]), sys.argv[2:]
try:
    for pin in pins:
        name, wanted = pin.split("==")
        assert version(name) == wanted, f"{name} {version(name)} != {wanted}"
    version("task-transfer-analysis")
    version("tta-example-plugin")
except (PackageNotFoundError, AssertionError):
    sys.exit(1)
spec = importlib.util.find_spec("tta")
sys.exit(0 if spec and spec.origin and Path(spec.origin).resolve().is_relative_to(root.resolve()) else 1)
PY
    )
}

STAMP_FILE="$VENV_ABS/$STAMP_NAME"
WANT="$(stamp_value)"
if [[ "${TTA_SETUP_FORCE:-0}" != 1 && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$WANT" ]] && installed_ok; then
    log "$VENV is up to date (pyproject.toml, constraints.txt and scripts/setup.sh unchanged)"
else
    rm -f "$STAMP_FILE"
    PIP=("$VPY" -m pip --disable-pip-version-check)
    timed "upgrade pip" "${PIP[@]}" install --upgrade pip -c constraints.txt
    timed "install ${TORCH_PINS[*]}" "${PIP[@]}" install "${TORCH_PINS[@]}" -c constraints.txt
    timed "install -e .[$EXTRAS]" "${PIP[@]}" install -e ".[$EXTRAS]" -c constraints.txt
    timed "install -e plugins/tta-example-plugin" "${PIP[@]}" install --no-deps -e plugins/tta-example-plugin -c constraints.txt
    installed_ok || die "the install finished, but $VENV does not provide the pinned torch/torchvision and tta from $ROOT"
    echo "$WANT" >"$STAMP_FILE"
fi

TOTAL=$(elapsed "$T0" "$(now)")
log "timings:"
for line in "${TIMINGS[@]+"${TIMINGS[@]}"}"; do
    log "  $line"
done
log "  $(printf '%-44s %7s s' total "$TOTAL")"
log "ready: $VENV (activate with: source $VENV/bin/activate)"
