#!/usr/bin/env bash
# Set up the venv and run every check: bash scripts/test.sh [PYTEST_ARGS...]
#
#   1. scripts/setup.sh (the venv in $TTA_VENV, default .venv)
#   2. ruff check .
#   3. ruff format --check .
#   3b. mypy (the public API modules listed under [tool.mypy] in pyproject.toml)
#   4. sphinx-build -W (warnings are errors) into docs/_build/html
#   5. python -m pytest PYTEST_ARGS...   (exit code 5, "no tests collected", counts as a failure);
#      without PYTEST_ARGS every test, the slow ones included (-m "slow or not slow"; a plain
#      `pytest` deselects the tests marked slow)
#   6. without PYTEST_ARGS: python -m pytest plugins/tta-example-plugin (the example plugin's tests)
#
# Every check runs even when an earlier one fails; the script exits non-zero if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TTA_VENV:-.venv}"

log() { printf '[test] %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)

bash scripts/setup.sh "$VENV"
VENV_ABS="$(cd "$VENV" && pwd)"
export PATH="$VENV_ABS/bin:$PATH"
export VIRTUAL_ENV="$VENV_ABS"
hash -r

SUMMARY=()
FAILED=0
check() { # check LABEL CMD ARGS...
    local label=$1 start rc=0 secs
    shift
    log "=== $label: $*"
    start=$(now)
    "$@" || rc=$?
    secs=$(elapsed "$start" "$(now)")
    if ((rc == 0)); then
        SUMMARY+=("$(printf 'ok      %-14s %7s s' "$label" "$secs")")
    else
        FAILED=1
        SUMMARY+=("$(printf 'FAILED  %-14s %7s s  (exit %s)' "$label" "$secs" "$rc")")
    fi
    return 0
}

run_pytest() {
    local rc=0
    python -m pytest "$@" || rc=$?
    if ((rc == 5)); then
        echo "[test] error: pytest collected no tests (exit code 5); a test run must execute tests" >&2
    fi
    return "$rc"
}

check "ruff check" ruff check .
check "ruff format" ruff format --check .
check "mypy" mypy
check "docs" sphinx-build -W --keep-going -E -q -b html docs docs/_build/html
if (($# == 0)); then
    check "pytest" run_pytest -m "slow or not slow"
else
    check "pytest" run_pytest "$@"
fi
if (($# == 0)); then
    check "example plugin" run_pytest plugins/tta-example-plugin
fi

log "summary:"
for line in "${SUMMARY[@]}"; do
    log "  $line"
done
log "  total $(elapsed "$T0" "$(now)") s (setup included)"
if ((FAILED)); then
    log "some checks FAILED"
    exit 1
fi
log "all checks passed"
