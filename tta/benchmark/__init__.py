"""The benchmark harness: the tta bound and the baseline estimators against ground truth.

- Config: :class:`BenchmarkConfig` (backbones, tasks, pairs or a grid, fit settings), :func:`load_config`.
- The resumable loop (features → bound → estimators → ground truth): :func:`run_benchmark`,
  :class:`BenchmarkRun`, :func:`run_pair`, :func:`fit_bound`.
- Metrics: Pearson r, Kendall τ, weighted τ_w (pooled and mean per target, with bootstrap intervals),
  rel@k (:func:`correlations`, :func:`weighted_tau_interval`...).
- Reports: tidy CSV/Parquet, JSON summary, Markdown report and figures (:func:`write_report`).
- External tables of scores and ground truth: :func:`read_external`.
- Ranking a model zoo (or reference tasks) for one target by the bound: :func:`rank_candidates`,
  :class:`Ranking`, :func:`explain`.
- Label-free targets: :func:`kmeans_pseudo_labels`, :func:`with_target_labels`.

``tta benchmark --config ...`` and ``tta rank ...`` are the command-line entry points. Importing this
package does not import Lightning or timm; they load when a run starts.
"""

from tta.benchmark._config import (
    BackboneSpec,
    BenchmarkConfig,
    BenchmarkConfigError,
    ModelSettings,
    PairSpec,
    load_config,
)
from tta.benchmark._external import (
    TRUTH_CANDIDATES,
    read_external,
)
from tta.benchmark._labelfree import (
    has_labels,
    kmeans_pseudo_labels,
    transformed_predictions,
    with_target_labels,
)
from tta.benchmark._metrics import (
    BOOTSTRAP_SEED,
    CONFIDENCE_LEVEL,
    N_RESAMPLES,
    correlations,
    kendall_tau,
    mean_weighted_tau,
    pearson,
    rel_at_k,
    weighted_tau,
    weighted_tau_interval,
)
from tta.benchmark._rank import (
    RANK_BY,
    TERM_LABELS,
    Ranking,
    explain,
    rank_candidates,
    ranking_table,
    separation,
    term_legend,
)
from tta.benchmark._report import (
    BOUND,
    CONVENTIONS,
    TRUTHS,
    bootstrap_settings,
    correlation_table,
    pair_rows,
    score_rows,
    summary_columns,
    summary_rows,
    write_csv,
    write_report,
)
from tta.benchmark._runner import (
    FIT_STAGES,
    BenchmarkRun,
    estimator_names,
    fit_bound,
    load_pair_features,
    pair_id,
    pool_scores,
    run_benchmark,
    run_estimators,
    run_pair,
)

__all__ = [
    "BOOTSTRAP_SEED",
    "BOUND",
    "CONFIDENCE_LEVEL",
    "CONVENTIONS",
    "FIT_STAGES",
    "N_RESAMPLES",
    "RANK_BY",
    "TERM_LABELS",
    "TRUTHS",
    "TRUTH_CANDIDATES",
    "BackboneSpec",
    "BenchmarkConfig",
    "BenchmarkConfigError",
    "BenchmarkRun",
    "ModelSettings",
    "PairSpec",
    "Ranking",
    "bootstrap_settings",
    "correlation_table",
    "correlations",
    "estimator_names",
    "explain",
    "fit_bound",
    "has_labels",
    "kendall_tau",
    "kmeans_pseudo_labels",
    "load_config",
    "load_pair_features",
    "mean_weighted_tau",
    "pair_id",
    "pair_rows",
    "pearson",
    "pool_scores",
    "rank_candidates",
    "ranking_table",
    "read_external",
    "rel_at_k",
    "run_benchmark",
    "run_estimators",
    "run_pair",
    "score_rows",
    "separation",
    "summary_columns",
    "summary_rows",
    "term_legend",
    "transformed_predictions",
    "weighted_tau",
    "weighted_tau_interval",
    "with_target_labels",
    "write_csv",
    "write_report",
]
