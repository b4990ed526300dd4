"""The fit engine: one implementation of every loop of an analysis. Pure torch (no Lightning, no I/O).

- :class:`HeadTrainer` trains one gradient-penalised linear head (:func:`fit_linear_head` loops over it);
- :class:`TransformFitter` learns the transform — optimiser, cond(A) guard, best-state selection,
  convergence-based stopping (:func:`learn_transform` loops over it);
- :class:`Analysis` holds the heads and the transform and runs the four phases one global step at a
  time; :func:`analyze_features` fits and evaluates it on a :class:`~tta.data.FeaturePair`, and
  :func:`analyze` (also ``tta.analyze``) on plain ``(features, labels)`` tensors, in one call;
- :func:`evaluate_bound` evaluates the bound on test splits and returns a :class:`~tta.results.BoundReport`.

``tta fit`` (:class:`tta.modules.TaskTransferAnalysis`) calls :meth:`Analysis.step` from its training
step, so the Python API and the command line give bit-identical heads, transform and bound for a seed.
"""

from tta.fitting._analysis import PHASES, Analysis, AnalysisSettings, Phase, analyze_features
from tta.fitting._api import analyze, split_features
from tta.fitting._config import EvalConfig, TransformConfig
from tta.fitting._evaluate import EvalTransform, evaluate_bound, prepare_evaluation
from tta.fitting._heads import HeadTrainer, fit_linear_head
from tta.fitting._health import ConditionGuard, WarningLog, check_finite_gradients
from tta.fitting._metrics import ProbeMetrics
from tta.fitting._objective import (
    default_objective,
    faithful_objective,
    finish_transform,
    initialise_transform,
    sample_by_prior,
    step_objective,
    transform_optimizer,
)
from tta.fitting._selection import BestTransform, is_selection_step, selection_subset, selects_best
from tta.fitting._transform import TransformFitter, learn_transform

__all__ = [
    "PHASES",
    "Analysis",
    "AnalysisSettings",
    "BestTransform",
    "ConditionGuard",
    "EvalConfig",
    "EvalTransform",
    "HeadTrainer",
    "Phase",
    "ProbeMetrics",
    "TransformConfig",
    "TransformFitter",
    "WarningLog",
    "analyze",
    "analyze_features",
    "check_finite_gradients",
    "default_objective",
    "evaluate_bound",
    "faithful_objective",
    "finish_transform",
    "fit_linear_head",
    "initialise_transform",
    "is_selection_step",
    "learn_transform",
    "prepare_evaluation",
    "sample_by_prior",
    "selection_subset",
    "selects_best",
    "split_features",
    "step_objective",
    "transform_optimizer",
]
