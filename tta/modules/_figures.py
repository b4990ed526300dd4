"""Matplotlib figures for TensorBoard: the label map, the reference prior and the bound decomposition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tta.results import AnalysisResult

__all__ = ["bound_decomposition_figure", "label_map_figure", "prior_figure"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def label_map_figure(
    label_map: Sequence[Sequence[float]], source_names: Sequence[str], target_names: Sequence[str]
) -> Any:
    """Heatmap of B (rows: target classes, columns: reference classes), values P(t | s)."""
    plt = _plt()
    k_t, k_s = len(label_map), len(label_map[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k_s + 2), max(3.0, 0.4 * k_t + 1.5)))
    im = ax.imshow(label_map, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(k_s), [str(n) for n in source_names][:k_s], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k_t), [str(n) for n in target_names][:k_t], fontsize=7)
    ax.set_xlabel("reference class s")
    ax.set_ylabel("target class t")
    ax.set_title("label map B = P(t | s)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def prior_figure(prior: Sequence[float], source_names: Sequence[str], top: int = 20) -> Any:
    """Bar chart of the top-weighted reference classes in D."""
    plt = _plt()
    order = sorted(range(len(prior)), key=lambda i: -prior[i])[:top]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    ax.barh(
        [str(source_names[i]) if i < len(source_names) else str(i) for i in order][::-1],
        [prior[i] for i in order][::-1],
    )
    ax.set_xlabel("D_s")
    ax.set_title(f"top {len(order)} reference classes by weight in D")
    fig.tight_layout()
    return fig


def bound_decomposition_figure(result: AnalysisResult) -> Any:
    """Stacked bar of the three terms of the bound beside the target CE of h''' and of the probes."""
    plt = _plt()
    report = result.report
    fig, ax = plt.subplots(figsize=(6, 3.5))
    parts = [
        ("weighted source loss", report.weighted_source_loss),
        ("H(Y_T|Y_S)", report.conditional_entropy),
        ("tau * W1", report.tau_w1),
    ]
    bottom = 0.0
    for label, value in parts:
        ax.bar(["bound"], [value], bottom=[bottom], label=label)
        bottom += value
    actual = [
        ("h''' target CE", result.transformed_classifier.target_ce),
        ("probe target CE", result.probe.target_ce),
        ("standard probe CE", result.standard_probe.target_ce),
    ]
    ax.bar([a for a, _ in actual], [v for _, v in actual], color="grey")
    ax.set_ylabel("nats")
    ax.set_title(f"bound {result.bound:.3f} vs actual")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig
