"""The benchmark harness: the tta bound and the baseline estimators against ground truth.

- :mod:`tta.benchmark.config`: the benchmark config (backbones, tasks, pairs or a grid, fit settings).
- :mod:`tta.benchmark.runner`: the resumable loop: features → bound → estimators → ground truth.
- :mod:`tta.benchmark.metrics`: Pearson r, Kendall τ, weighted τ_w (pooled and mean per target, with
  bootstrap intervals), rel@k.
- :mod:`tta.benchmark.report`: tidy CSV/Parquet, JSON summary, Markdown report and figures.
- :mod:`tta.benchmark.external`: evaluate an external table of scores and ground truth.
- :mod:`tta.benchmark.rank`: rank a model zoo (or reference tasks) for one target by the bound.
- :mod:`tta.benchmark.labelfree`: pseudo-labels for targets without labels.

``tta benchmark --config ...`` and ``tta rank ...`` are the command-line entry points. Importing this
package is cheap: Lightning, SciPy and matplotlib load when a run starts.
"""

from tta.benchmark.config import (
    BackboneSpec,
    BenchmarkConfig,
    BenchmarkConfigError,
    ModelSettings,
    PairSpec,
    load_config,
)
from tta.benchmark.metrics import (
    correlations,
    kendall_tau,
    mean_weighted_tau,
    pearson,
    rel_at_k,
    weighted_tau,
    weighted_tau_interval,
)

__all__ = [
    "BackboneSpec",
    "BenchmarkConfig",
    "BenchmarkConfigError",
    "ModelSettings",
    "PairSpec",
    "correlations",
    "kendall_tau",
    "load_config",
    "mean_weighted_tau",
    "pearson",
    "rel_at_k",
    "weighted_tau",
    "weighted_tau_interval",
]
