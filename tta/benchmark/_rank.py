"""Rank candidate backbones (or candidate reference tasks) for one target by the tta bound.

Each candidate is one (backbone, reference, target) pair fitted exactly as in the benchmark
(:func:`tta.benchmark.run_pair`, no baseline estimators). Lower bound = better candidate. Each
row says *why* it ranks above the next one (:func:`separation`): the term whose difference contributes
most to the difference of the bounds, with both values — the weighted source loss (the reference
classifier itself is poor on its own task), the label mismatch H(Y_T|Y_S) (the target's classes do not
map onto the reference's), or the feature distance τ̂·W₁ (the target's features sit far from the
transformed reference's). :func:`explain` gives the term that dominates one bound.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tta.benchmark._config import BenchmarkConfig, PairSpec

__all__ = [
    "RANK_BY",
    "TERM_LABELS",
    "Ranking",
    "explain",
    "rank_candidates",
    "ranking_table",
    "separation",
    "term_legend",
]

#: The bound's terms: record key -> (short label, "why" phrase, what it means when it dominates).
TERM_LABELS: dict[str, tuple[str, str, str]] = {
    "weighted_source_loss": (
        "source loss",
        "source loss dominates",
        "the reference classifier h_S is weak on its own reference task",
    ),
    "conditional_entropy": (
        "H(Y_T|Y_S)",
        "label mismatch dominates",
        "the target's classes do not map one-to-one onto the reference's",
    ),
    "tau_w1": (
        "distribution term",
        "feature distance dominates",
        "the target features sit far from the transformed reference features (τ̂·W₁ for the paper "
        "variant, the logit-space transport for the logit variant)",
    ),
}


def explain(terms: dict[str, float]) -> tuple[str, float, str]:
    """Which term of the bound dominates, its share of the bound, and a one-line "why".

    Args:
        terms: The record's ``terms`` (``weighted_source_loss``, ``conditional_entropy``, ``tau_w1``).

    Returns:
        ``(term key, share in [0, 1], text)``; the text reads e.g. ``"label mismatch dominates (62% of
        the bound)"``.
    """
    parts = {k: max(float(terms[k]), 0.0) for k in TERM_LABELS}
    total = sum(parts.values())
    key = max(parts, key=lambda k: parts[k])
    share = parts[key] / total if total > 0 else 0.0
    return key, share, f"{TERM_LABELS[key][1]} ({share:.0%} of the bound)"


def separation(better: dict[str, Any], worse: dict[str, Any]) -> tuple[str, float, str]:
    """Which term decides that ``better`` ranks above ``worse``, and a sentence with the numbers.

    The bound's difference is the sum of the terms' differences; the deciding term is the one whose
    difference contributes most to it (the largest ``worse - better``).

    Args:
        better: The record ranked higher (lower bound); ``terms`` and ``candidate``.
        worse: The record ranked just below it.

    Returns:
        ``(term key, its difference, text)``; the text reads e.g. ``"0.553 below lite0_112: the
        distribution mismatch τ·W₁ decides (0.590 vs 1.160); source loss 2.023 vs 2.031"``.
    """
    diffs = {k: float(worse["terms"][k]) - float(better["terms"][k]) for k in TERM_LABELS}
    key = max(diffs, key=lambda k: diffs[k])
    gap = float(worse["bound"]) - float(better["bound"])
    others = "; ".join(
        f"{TERM_LABELS[k][0]} {float(better['terms'][k]):.3f} vs {float(worse['terms'][k]):.3f}"
        for k in TERM_LABELS
        if k != key
    )
    text = (
        f"{gap:.3f} below {worse['candidate']}: {TERM_LABELS[key][0]} decides "
        f"({float(better['terms'][key]):.3f} vs {float(worse['terms'][key]):.3f}); {others}"
    )
    return key, diffs[key], text


#: What candidates can be ranked by: key -> (what the table's title says, True when higher is better).
RANK_BY: dict[str, tuple[str, bool]] = {
    "bound": ("the tta bound", False),
    "transformed_acc": ("the target accuracy of the transformed reference classifier h‴", True),
}


def accuracy_separation(better: dict[str, Any], worse: dict[str, Any]) -> str:
    """Why ``better`` ranks above ``worse`` when candidates are ranked by h‴'s target accuracy.

    Returns:
        E.g. ``"h‴ accuracy 0.950 vs 0.900 of lite0_64; bound 1.435 vs 1.680"``.
    """
    acc = (float(better["ground_truth"]["transformed_acc"]), float(worse["ground_truth"]["transformed_acc"]))
    return (
        f"h‴ accuracy {acc[0]:.3f} vs {acc[1]:.3f} of {worse['candidate']}; "
        f"bound {float(better['bound']):.3f} vs {float(worse['bound']):.3f}"
    )


@dataclass
class Ranking:
    """The result of :func:`rank_candidates`.

    Attributes:
        records: Candidate records, best (lowest bound) first; each has ``candidate``, ``rank`` and
            ``why``.
        kind: ``backbones`` or ``references`` (what was ranked).
        label_free: ``None`` when the target's labels were used, else how the pseudo-labels were made
            and why.
        by: What the candidates are sorted by (a key of :data:`RANK_BY`).
    """

    records: list[dict[str, Any]]
    kind: str
    label_free: dict[str, Any] | None
    by: str = "bound"


def rank_candidates(
    pairs: Sequence[PairSpec],
    config: BenchmarkConfig,
    kind: str,
    label_free: bool = False,
    pseudo_labels: str = "kmeans",
    num_classes: int | None = None,
    features: Sequence[Any] | None = None,
    by: str = "bound",
) -> Ranking:
    """Fit the bound of every candidate pair and sort the candidates by it (or by h‴'s accuracy).

    Args:
        pairs: One pair per candidate, all with the same target.
        config: Fit settings, seed, cache.
        kind: ``backbones`` or ``references``: which element of the pairs varies.
        label_free: Ignore the target labels and use pseudo-labels. Switched on automatically when the
            target has no labels (any label negative).
        pseudo_labels: ``kmeans`` (cluster ids) or ``transformed`` (k-means, fit, then the predictions
            of the transformed classifier, fit again); see :mod:`tta.benchmark`.
        num_classes: Number of pseudo-classes; default the number of target classes (required when the
            target has no labels).
        features: Precomputed feature pairs, one per candidate (skips extraction).
        by: ``bound`` (lowest first) or ``transformed_acc``: the target test accuracy of the transformed
            reference classifier h‴ whose loss the bound certifies (highest first, ties by the bound). The
            second is a score, not a certificate; docs/benchmark.md measures both.

    Returns:
        The :class:`Ranking`.

    Raises:
        ValueError: On an empty zoo, pairs with different targets, an unknown ``pseudo_labels`` or
            ``by``, or a label-free target without ``num_classes``.
    """
    from tta.benchmark import _labelfree as lf
    from tta.benchmark._runner import fit_bound, run_pair

    if not pairs:
        raise ValueError("the zoo is empty: give at least one candidate")
    if len({(p.target_name, repr(p.target)) for p in pairs}) != 1:
        raise ValueError("every candidate must share the same target task")
    if by not in RANK_BY:
        raise ValueError(f"by must be one of {', '.join(RANK_BY)}, got {by!r}")
    if pseudo_labels not in ("kmeans", "transformed"):
        raise ValueError(f"pseudo_labels must be 'kmeans' or 'transformed', got {pseudo_labels!r}")
    notes: list[dict[str, Any]] = []

    def relabel(fp: Any) -> tuple[Any, dict[str, Any] | None]:
        labelled = lf.has_labels(fp.target_train[1]) and lf.has_labels(fp.target_test[1])
        if label_free is False and labelled:
            return fp, None
        reason = "requested (--label-free)" if label_free else "the target has no labels"
        k = num_classes or (fp.num_target_classes if labelled else None)
        if k is None:
            raise ValueError("the target has no labels: give the number of pseudo-classes (--num-classes K)")
        y_tr, y_te = lf.kmeans_pseudo_labels(fp.target_train[0], fp.target_test[0], k, config.seed)
        out = lf.with_target_labels(fp, y_tr, y_te, k)
        note = {"method": "kmeans", "k": k, "reason": reason, "seed": config.seed}
        if pseudo_labels == "transformed":
            model, _ = fit_bound(out, config.model, config.seed)
            y_tr = lf.transformed_predictions(model, out.target_train[0])
            y_te = lf.transformed_predictions(model, out.target_test[0])
            out = lf.with_target_labels(out, y_tr, y_te, k, prefix="pred")
            note["method"] = "transformed classifier predictions (after k-means)"
        notes.append(note)
        return out, note

    records = []
    for i, pair in enumerate(pairs):
        record, _, _ = run_pair(
            pair, config, [], features=None if features is None else features[i], relabel=relabel
        )
        record["candidate"] = pair.backbone_name if kind == "backbones" else pair.reference_name
        key, share, why = explain(record["terms"])
        record["dominant_term"], record["dominant_share"], record["why"] = key, share, why
        records.append(record)
    if by == "bound":
        records.sort(key=lambda r: r["bound"])
    else:
        records.sort(key=lambda r: (-float(r["ground_truth"]["transformed_acc"]), r["bound"]))
    for i, r in enumerate(records, start=1):
        r["rank"] = i
    for better, worse in itertools.pairwise(records):  # what separates each candidate from the next
        if by == "bound":
            key, diff, text = separation(better, worse)
            better["separated_by"], better["separation"], better["why"] = key, diff, text
        else:
            better["separated_by"] = "transformed_acc"
            better["separation"] = float(better["ground_truth"]["transformed_acc"]) - float(
                worse["ground_truth"]["transformed_acc"]
            )
            better["why"] = f"{accuracy_separation(better, worse)}; {better['why']}"
    if records:
        last = records[-1]
        last["why"] = f"last; {last['why']}" if len(records) > 1 else last["why"]
    return Ranking(records=records, kind=kind, label_free=notes[0] if notes else None, by=by)


def ranking_table(ranking: Ranking, target: str) -> Any:
    """A rich table: rank, candidate, bound, its three terms, the share of the dominant term, why."""
    from rich.table import Table

    variants = sorted({str(r.get("variant", "paper")) for r in ranking.records})
    what, higher = RANK_BY[ranking.by]
    title = (
        f"candidate {ranking.kind} for target {target}, ranked by {what} "
        f"({'/'.join(variants)} variant; {'higher' if higher else 'lower'} is better)"
    )
    if ranking.label_free:
        title += (
            f"\nLABEL-FREE: pseudo-labels from {ranking.label_free['method']}, k={ranking.label_free['k']}"
        )
    table = Table(title=title, show_lines=False)
    for col in (
        "rank",
        "candidate",
        "bound",
        "trivial",
        "source loss",
        "H(Y_T|Y_S)",
        "distribution",
        "h‴ acc",
    ):
        table.add_column(  # a long candidate name folds over lines instead of being cut short
            col,
            justify="left" if col == "candidate" else "right",
            overflow="fold" if col == "candidate" else "ellipsis",
        )
    if not ranking.label_free:
        table.add_column("probe acc", justify="right")
    table.add_column("why (what separates it from the next)", ratio=1, min_width=12, overflow="fold")
    for r in ranking.records:
        t = r["terms"]
        row = [
            str(r["rank"]),
            r["candidate"],
            f"{r['bound']:.3f}" + (" (vacuous)" if r.get("vacuous") else ""),
            "" if r.get("trivial_level") is None else f"{r['trivial_level']:.3f}",
            f"{t['weighted_source_loss']:.3f}",
            f"{t['conditional_entropy']:.3f}",
            f"{t['tau_w1']:.3f}",
            f"{r['ground_truth']['transformed_acc']:.3f}",
        ]
        if not ranking.label_free:
            row.append(f"{r['ground_truth']['probe_acc']:.3f}")
        table.add_row(*row, r["why"])
    return table


def term_legend() -> str:
    """One line per term: what it means when it dominates (printed under the ranking table)."""
    return "\n".join(f"{label}: {why} — {meaning}" for label, why, meaning in TERM_LABELS.values())
