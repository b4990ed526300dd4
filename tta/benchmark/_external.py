"""Evaluate an external table of estimator scores against ground-truth accuracies.

The CSV holds one row per model × target::

    model,target,accuracy,logme,leep,imagenet_top1
    resnet50,cifar10,96.8,1.21,-0.41,76.1
    ...

* ``model`` and ``target`` identify the row (``backbone`` is accepted for ``model``);
* the ground-truth column (``--truth``; default the first of ``accuracy``, ``acc``, ``ground_truth``,
  ``finetune_acc`` present) is higher-is-better;
* every other numeric column is an estimator's score. Its direction is the registered estimator's
  when the column is named after one, lower-is-better when listed in ``lower_is_better``, and
  higher-is-better otherwise. A metadata column such as ``imagenet_top1`` is the static ranker
  (ignores the target) and is evaluated like any other score.

The rows are turned into the same tidy rows as the harness and go through the same report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TRUTH_CANDIDATES", "read_external"]

TRUTH_CANDIDATES = ("accuracy", "acc", "ground_truth", "finetune_acc")
_ID_COLUMNS = ("model", "backbone", "target")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value


def _direction(column: str, lower_is_better: set[str]) -> bool:
    if column in lower_is_better:
        return False
    try:
        from tta.estimators import describe

        return bool(describe(column).higher_is_better)
    except Exception:
        return True


def read_external(
    path: str | Path, truth: str | None = None, lower_is_better: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read an external score table into tidy rows.

    Args:
        path: The CSV file.
        truth: Ground-truth column (higher is better); default: the first of
            :data:`TRUTH_CANDIDATES` present.
        lower_is_better: Score columns where lower predicts better transfer (negated before correlation).

    Returns:
        ``(rows, info)``: tidy rows (``model``, ``backbone``, ``target``, ``estimator``, ``score``,
        ``aligned_score``, ``higher_is_better``, ``status``, the truth column) and a dict naming the
        truth column, the score columns and the ignored (non-numeric) columns.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On a missing ``model``/``target`` or truth column, an empty table, or a duplicate
            model × target row, naming the column or row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"external table {path} not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        raw = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    model_col = "model" if "model" in columns else "backbone" if "backbone" in columns else None
    if model_col is None or "target" not in columns:
        raise ValueError(
            f"{path}: the table needs a 'model' (or 'backbone') column and a 'target' column; "
            f"it has {columns}"
        )
    if truth is None:
        truth = next((c for c in TRUTH_CANDIDATES if c in columns), None)
        if truth is None:
            raise ValueError(
                f"{path}: no ground-truth column; name one with --truth (columns: {columns}; "
                f"looked for {list(TRUTH_CANDIDATES)})"
            )
    elif truth not in columns:
        raise ValueError(f"{path}: ground-truth column {truth!r} not in {columns}")
    if not raw:
        raise ValueError(f"{path}: the table has no rows")
    lower = {c.strip() for c in lower_is_better}
    unknown = sorted(lower - set(columns))
    if unknown:
        raise ValueError(f"{path}: lower-is-better column(s) {unknown} not in {columns}")
    candidates = [c for c in columns if c not in (*_ID_COLUMNS, truth)]
    scores = [c for c in candidates if all(_number(r[c]) is not None or r[c] == "" for r in raw)]
    ignored = [c for c in candidates if c not in scores]
    seen: set[tuple[str, str]] = set()
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(raw, start=2):
        key = (r[model_col], r["target"])
        if key in seen:
            raise ValueError(f"{path}: line {i}: duplicate row for model {key[0]!r} and target {key[1]!r}")
        seen.add(key)
        truth_value = _number(r[truth])
        if truth_value is None:
            raise ValueError(f"{path}: line {i}: ground truth {truth}={r[truth]!r} is not a number")
        for col in scores:
            hib = _direction(col, lower)
            value = _number(r[col])
            ok = value is not None and math.isfinite(value)
            rows.append(
                {
                    "pair_id": f"{key[0]}__{key[1]}",
                    "backbone": key[0],
                    "reference": "",
                    "target": key[1],
                    "estimator": col,
                    "score": value if ok else math.nan,
                    "aligned_score": (value if hib else -value) if ok else math.nan,  # type: ignore[operator]
                    "higher_is_better": hib,
                    "status": "ok" if ok else "missing",
                    "reason": "" if ok else "no value in the table",
                    "seconds": 0.0,
                    truth: truth_value,
                }
            )
    info = {"truth": truth, "scores": scores, "ignored_columns": ignored, "source": str(path)}
    return rows, info
