"""One analysis as plain torch: the heads, the transform, the four phases that fit them, the evaluation.

:class:`Analysis` is the torch side of ``tta fit`` (anomalib's ``torch_model``): it holds the learnable
parts and the loop state, and runs one global step at a time (:meth:`Analysis.step`). The Lightning
module :class:`tta.modules.TaskTransferAnalysis` only calls it, logs and checkpoints; the Python API
(:meth:`Analysis.fit`, :func:`tta.fitting.analyze_features`) and the benchmark run the same steps in a
loop, so a seed gives bit-identical heads, transform and bound either way.

Phases, in order (one optimiser step per global step):

1. ``source_head`` — the reference classifier :math:`h_S` (gradient-penalised), on the reference features;
2. ``probe`` — the gradient-penalised target probe (the ground truth the bound covers);
3. ``standard_probe`` — the plain L2 logistic target probe (what users actually train);
4. ``transform`` — D, B, A, Ā, b, whose loss is the bound (or the authors' objective).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from tta import bound as B
from tta.fitting._config import EvalConfig, TransformConfig
from tta.fitting._evaluate import EvalTransform, evaluate_bound, prepare_evaluation
from tta.fitting._heads import Backward, HeadTrainer, _backward
from tta.fitting._health import WarningLog
from tta.fitting._metrics import ProbeMetrics
from tta.fitting._objective import initialise_transform
from tta.fitting._transform import TransformFitter
from tta.heads import HeadConfig, LinearHead
from tta.results._types import AnalysisResult, ClassifierMetrics, ConditionRecord
from tta.transforms import TaskTransform

__all__ = ["PHASES", "Analysis", "AnalysisSettings", "Phase", "analyze_features"]

#: The phases of a fit, in order.
PHASES = ("source_head", "probe", "standard_probe", "transform")

#: The classifiers evaluated on the target test split, as named in the result.
CLASSIFIERS = ("transformed", "probe", "standard_probe")


class Phase(Protocol):
    """What the analysis loop needs of a phase (:class:`HeadTrainer` or :class:`TransformFitter`)."""

    name: str
    finished: bool

    @property
    def total_steps(self) -> int: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer | None: ...

    def step(
        self, step: int, backward: Backward = ..., optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, Any] | None: ...

    def finish(self) -> None: ...

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class AnalysisSettings:
    """Every setting of an analysis besides the data and the seed.

    Args:
        source_head: Training of the reference classifier :math:`h_S`.
        probe: Training of the gradient-penalised target probe (the ground truth covered by the bound).
        standard_probe: Training of the plain L2 logistic-regression target probe (``w_gp: 0``).
        transform: How the transform is learned.
        evaluation: How the bound is evaluated on the test splits.
        distance: Wasserstein estimator used while learning (a registered name).
        eval_distance: Wasserstein estimator of the reported bound.
    """

    source_head: HeadConfig = field(default_factory=HeadConfig)
    probe: HeadConfig = field(default_factory=HeadConfig)
    standard_probe: HeadConfig = field(default_factory=lambda: HeadConfig(w_gp=0.0, weight_decay=1e-2))
    transform: TransformConfig = field(default_factory=TransformConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    distance: str = "auto"
    eval_distance: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "") -> None:
        """Check every section (names in errors: ``<prefix>source_head.steps``...).

        Args:
            prefix: Prepended to the section names (``"model."`` under ``tta fit``).

        Raises:
            tta.errors.TTAInputError: For the first invalid field.
        """
        for name in ("source_head", "probe", "standard_probe"):
            getattr(self, name).validate(f"{prefix}{name}")
        self.transform.validate(f"{prefix}transform")
        self.evaluation.validate(f"{prefix}evaluation")

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for hashing and the result records)."""
        return asdict(self)

    def with_variant(self, variant: str) -> AnalysisSettings:
        r"""These settings for one bound variant, with the reference head that variant is meant for.

        ``paper`` keeps the authors' setting: the τ-penalised reference head, trained as the τ-probe
        (``probe``), since :math:`\hat\tau\,W_1` needs a small Lipschitz constant. ``logit`` needs no
        Lipschitz control (docs/method.md, Theorem 2), so its reference head is trained as the
        unpenalised standard probe (``standard_probe``). Everything else is unchanged.

        Args:
            variant: ``paper`` or ``logit``.

        Returns:
            New settings (this object is not modified).

        Raises:
            ValueError: For another variant name.
        """
        if variant not in ("paper", "logit"):
            raise ValueError(f"variant must be 'paper' or 'logit', got {variant!r}")
        head = self.probe if variant == "paper" else self.standard_probe
        return replace(
            self,
            source_head=replace(head),
            transform=replace(self.transform, variant=variant),  # type: ignore[arg-type]
        )

    def phase_steps(self) -> dict[str, int]:
        """Number of training steps of each phase."""
        learnable = self.transform.mode != "fixed_all"
        return {
            "source_head": self.source_head.steps,
            "probe": self.probe.steps,
            "standard_probe": self.standard_probe.steps,
            "transform": self.transform.steps if learnable else 0,
        }


def _to(split: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    return split[0].to(device), split[1].to(device)


class Analysis(nn.Module):
    """The learnable parts of one analysis and the loop that fits them.

    Args:
        feature_dim: ``d``.
        num_source_classes: ``K_S``.
        num_target_classes: ``K_T``.
        settings: Heads, transform and evaluation settings.
        seed: Seed of every random draw (the heads use ``seed``, ``seed + 1``, ``seed + 2``).
        distance: The Wasserstein estimator while learning (an instance; default ``settings.distance``).
        eval_distance: The estimator of the reported bound (default ``settings.eval_distance``).

    Attributes:
        source_head: :math:`h_S` (logits).
        probe: The τ-penalised target probe (logits).
        standard_probe: The standard target probe (logits).
        transform: D, B, A, Ā, b.
        phases: The four phases, once :meth:`start` has run.
        timings: Seconds spent in each phase.
        warning_log: The numerical warnings of the run.
    """

    def __init__(
        self,
        feature_dim: int,
        num_source_classes: int,
        num_target_classes: int,
        settings: AnalysisSettings | None = None,
        seed: int = 0,
        distance: Any = None,
        eval_distance: Any = None,
    ):
        super().__init__()
        from tta.distances import create_distance

        self.settings = settings = settings or AnalysisSettings()
        self.seed = seed
        self.num_target_classes = num_target_classes
        self.source_head = LinearHead(feature_dim, num_source_classes)
        self.probe = LinearHead(feature_dim, num_target_classes)
        self.standard_probe = LinearHead(feature_dim, num_target_classes)
        self.transform = TaskTransform(
            num_source_classes,
            num_target_classes,
            feature_dim,
            mode=settings.transform.mode,
            feature_map="logit" if settings.transform.variant == "logit" else "dense",
        )
        self.distance = create_distance(settings.distance if distance is None else distance)
        self.eval_distance = create_distance(
            settings.eval_distance if eval_distance is None else eval_distance
        )
        self.warning_log = WarningLog()
        self.timings: dict[str, float] = {}
        self.phases: list[Phase] = []

    @classmethod
    def for_features(
        cls, features: Any, settings: AnalysisSettings | None = None, seed: int = 0, **kwargs: Any
    ) -> Analysis:
        """An analysis sized for ``features`` (a :class:`~tta.data.FeaturePair`)."""
        return cls(
            features.feature_dim,
            features.num_source_classes,
            features.num_target_classes,
            settings,
            seed,
            **kwargs,
        )

    # ---------------------------------------------------------------- the fit
    @torch.no_grad()
    def initialise(self, features: Any) -> None:
        """Initialise D and B from the training splits (:func:`~tta.fitting.initialise_transform`)."""
        initialise_transform(
            self.transform, features.source_train, features.target_train, self.settings.transform, self.seed
        )

    def start(self, features: Any) -> None:
        """Build the four phases over the training splits of ``features`` (on the analysis' device)."""
        device = self.source_head.weight.device
        source, target = _to(features.source_train, device), _to(features.target_train, device)
        s = self.settings
        self.phases = [
            HeadTrainer("source_head", self.source_head, source, s.source_head, self.seed),
            HeadTrainer("probe", self.probe, target, s.probe, self.seed + 1),
            HeadTrainer("standard_probe", self.standard_probe, target, s.standard_probe, self.seed + 2),
            TransformFitter(
                self.transform,
                self.source_head,
                source,
                target,
                self.distance,
                s.transform,
                self.seed,
                self.warning_log,
            ),
        ]

    @property
    def transform_phase(self) -> TransformFitter:
        """The transform phase (after :meth:`start`)."""
        phase = self.phases[-1]
        assert isinstance(phase, TransformFitter)
        return phase

    @property
    def total_steps(self) -> int:
        """Global steps of a fit (every phase's steps)."""
        return sum(self.settings.phase_steps().values())

    def phase_of(self, step: int) -> tuple[str, int]:
        """The phase of global step ``step`` and the step within it (``"done"`` after the last)."""
        for name, n in self.settings.phase_steps().items():
            if step < n:
                return name, step
            step -= n
        return "done", step

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimiser of each phase that has one (all but a ``fixed_all`` transform)."""
        return {p.name: p.optimizer for p in self.phases if p.optimizer is not None}

    def step(
        self,
        step: int,
        backward: Backward = _backward,
        optimizers: dict[str, torch.optim.Optimizer] | None = None,
    ) -> tuple[str, dict[str, Any] | None]:
        """Run global step ``step``: one optimiser step of its phase (a no-op for a phase stopped early).

        A phase whose steps are all done is finished at once (:meth:`TransformFitter.finish` restores the
        best transform).

        Args:
            step: The global step.
            backward: How to back-propagate a loss (Lightning's ``manual_backward``).
            optimizers: Wrappers of :meth:`optimizers` to step instead (Lightning's, which count the steps).

        Returns:
            The phase name and the step's record (``None`` for a no-op).
        """
        name, local = self.phase_of(step)
        started = time.perf_counter()
        record = None
        if name != "done":
            optimizer = None if optimizers is None else optimizers.get(name)
            record = self.phases[PHASES.index(name)].step(local, backward, optimizer)
        self.finish_phases(step + 1)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
        return name, record

    def finish_phases(self, done: int) -> None:
        """Finish every phase whose steps end at or before global step ``done`` (once each)."""
        end = 0
        for phase, n in zip(self.phases, self.settings.phase_steps().values()):
            end += n
            if end <= done and not phase.finished:
                phase.finish()

    def fit(
        self, features: Any, callback: Callable[[int, str, dict[str, Any] | None], None] | None = None
    ) -> None:
        """Initialise the transform and run every global step (the Python form of ``tta fit``).

        Args:
            features: A :class:`~tta.data.FeaturePair` of standardised features.
            callback: Called as ``callback(step, phase, record)`` after every step.
        """
        self.initialise(features)
        self.start(features)
        for step in range(self.total_steps):
            name, record = self.step(step)
            if callback is not None:
                callback(step, name, record)
        self.finish_phases(self.total_steps)

    def fit_timings(self) -> dict[str, float]:
        """Seconds per phase, and where the transform phase stopped and which state it kept."""
        out = dict(self.timings)
        out.pop("done", None)
        if self.phases:
            fitter = self.transform_phase
            if fitter.stopped_at is not None:
                out["transform_stopped_at"] = float(fitter.stopped_at)
            if fitter.selected_step is not None and fitter.finished:
                out["selected_step"] = float(fitter.selected_step)
        return out

    def engine_state(self, optimizers: bool = True) -> dict[str, Any]:
        """The loop state a checkpoint keeps besides the parameters (phases, timings, warnings).

        Args:
            optimizers: Include the optimisers' states (a Lightning checkpoint holds them already).
        """
        return {
            "phases": [p.state_dict(optimizer=optimizers) for p in self.phases],
            "timings": dict(self.timings),
            "warnings": self.warning_log.state_dict(),
        }

    def load_engine_state(self, state: dict[str, Any]) -> None:
        """From :meth:`engine_state` (after :meth:`start`)."""
        for phase, saved in zip(self.phases, state.get("phases") or []):
            phase.load_state_dict(saved)
        self.timings.update(state.get("timings") or {})
        self.warning_log.load_state_dict(state.get("warnings") or {})

    # ---------------------------------------------------------------- the evaluation
    def prepare_evaluation(self, target_labels: Tensor) -> EvalTransform:
        """The transform as evaluated on a target test split of labels ``target_labels``."""
        return prepare_evaluation(self.transform, target_labels, self.settings.evaluation)

    @torch.no_grad()
    def target_log_probs(self, ev: EvalTransform, z: Tensor) -> dict[str, Tensor]:
        """Log-probabilities ``(n, K_T)`` of the three classifiers on target features ``z``."""
        t, head = ev.transform, self.source_head
        if t.feature_map == "logit":  # the classifier the logit bound certifies (B with exact zeros)
            m, c = t.logit_map(head.weight, head.bias)
            transformed = -B.label_losses(z @ m.T + c, B.sparse_label_map(t.label_map))
        else:
            transformed = B.transformed_log_probs(
                z, head.weight, head.bias, t.log_label_map, ev.inverse, t.shift
            )
        return {
            "transformed": transformed,
            "probe": torch.log_softmax(self.probe(z), dim=-1),
            "standard_probe": torch.log_softmax(self.standard_probe(z), dim=-1),
        }

    def new_metrics(self) -> nn.ModuleDict:
        """One :class:`~tta.fitting.ProbeMetrics` per evaluated classifier."""
        return nn.ModuleDict({name: ProbeMetrics(self.num_target_classes) for name in CLASSIFIERS})

    @torch.no_grad()
    def evaluate(self, features: Any) -> AnalysisResult:
        """Evaluate the bound and the three classifiers on the test splits (all points in one batch)."""
        started = time.perf_counter()
        device = self.source_head.weight.device
        z, y = _to(features.target_test, device)
        metrics = self.new_metrics().to(device)
        for name, log_probs in self.target_log_probs(self.prepare_evaluation(y), z).items():
            metrics[name].update(log_probs, y)
        return self.result(features, metrics, started)

    @torch.no_grad()
    def result(self, features: Any, metrics: nn.ModuleDict, started: float) -> AnalysisResult:
        """The :class:`~tta.results.AnalysisResult` of the test splits, given the classifiers' metrics.

        Args:
            features: The features (test splits, summary, extraction timings).
            metrics: The :meth:`new_metrics` updated with every target test point.
            started: ``time.perf_counter()`` when the evaluation started (for ``timings["evaluation"]``).
        """
        device = self.source_head.weight.device
        source_test, target_test = _to(features.source_test, device), _to(features.target_test, device)
        with self.warning_log.capture("test"):
            report = evaluate_bound(
                self.transform,
                self.source_head,
                source_test,
                target_test,
                self.eval_distance,
                self.settings.evaluation,
                label_cost=self.settings.transform.label_cost,
            )
        values = {name: metrics[name].compute() for name in CLASSIFIERS}
        z_s, y_s = source_test
        source_acc = float((self.source_head(z_s).argmax(-1) == y_s).float().mean())
        numerics, messages = self._numerical_record()
        probes = {name: _metrics(values[name]) for name in ("probe", "standard_probe")}
        y_t = target_test[1]
        messages = [
            *messages,
            *_near_chance("the reference classifier h_S", "source_head", source_acc, y_s, "reference"),
            *_near_chance("the τ-penalised probe", "probe", probes["probe"].target_acc, y_t, "target"),
            *_near_chance(
                "the standard probe", "standard_probe", probes["standard_probe"].target_acc, y_t, "target"
            ),
        ]
        self.timings["evaluation"] = time.perf_counter() - started
        timings = {**getattr(features, "timings", {}), **self.fit_timings()}
        return AnalysisResult(
            report=report,
            transformed_classifier=_metrics(values["transformed"]),
            probe=probes["probe"],
            standard_probe=probes["standard_probe"],
            source_test_acc=source_acc,
            numerics=numerics,
            warnings=tuple(messages),
            determinism={
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            },
            seed=self.seed,
            mode=self.settings.transform.mode,
            algorithm=self.settings.transform.algorithm,
            timings=timings,
            data=features.summary() if hasattr(features, "summary") else {},
            label_map_choice=self.transform_phase.label_map_choice if self.phases else None,
        )

    def _numerical_record(self) -> tuple[ConditionRecord, list[str]]:
        """The cond(A) stop and the run's warnings."""
        messages = self.warning_log.messages()
        if not self.phases:
            return ConditionRecord(max_condition=self.settings.transform.max_condition), messages
        guard = self.transform_phase.guard
        if guard.stopped_at is not None and not any("max_condition" in m for m in messages):
            messages.insert(  # a checkpoint saved without the warning log
                0,
                f"cond(A) = {float(guard.cond_at_stop or 0.0):.3g} exceeded transform.max_condition = "
                f"{self.settings.transform.max_condition} after transform step {guard.stopped_at}; the "
                "transform phase stopped early and kept the last well-conditioned state",
            )
        return ConditionRecord(**guard.record()), messages


def _metrics(values: dict[str, float]) -> ClassifierMetrics:
    return ClassifierMetrics(values["ce"], values["acc"], values["ece"])


def analyze_features(
    features: Any,
    settings: AnalysisSettings | None = None,
    seed: int = 0,
    callback: Callable[[int, str, dict[str, Any] | None], None] | None = None,
    **kwargs: Any,
) -> tuple[Analysis, AnalysisResult]:
    """Fit and evaluate one analysis on precomputed features: what ``tta fit`` computes, without Lightning.

    Args:
        features: A :class:`~tta.data.FeaturePair` (standardised per task).
        settings: The analysis settings.
        seed: The seed.
        callback: Called as ``callback(step, phase, record)`` after every training step.
        **kwargs: ``distance`` / ``eval_distance`` instances for :class:`Analysis`.

    Returns:
        The fitted :class:`Analysis` and its :class:`~tta.results.AnalysisResult`.
    """
    analysis = Analysis.for_features(features, settings, seed, **kwargs)
    analysis.fit(features, callback)
    return analysis, analysis.evaluate(features)


def _near_chance(what: str, option: str, accuracy: float, labels: Tensor, split: str) -> list[str]:
    """A warning when a head's test accuracy is within 10% of the way from chance to perfect.

    Chance is the majority class's share of the test split (``1/K`` when balanced): a head that does
    not beat it by much was not trained enough (or the task is not separable in these features), and a
    bound or probe built on it describes the training, not the representation.
    """
    if labels.numel() == 0 or not math.isfinite(accuracy):
        return []
    counts = torch.bincount(labels.long())
    chance = float(counts.max()) / labels.numel()
    if accuracy >= chance + 0.1 * (1.0 - chance):
        return []
    return [
        f"{what} is near chance on the {split} test split ({accuracy:.1%}; majority class {chance:.1%}, "
        f"{int((counts > 0).sum())} classes): train it longer (model.{option}.steps, model.{option}.lr) or "
        "check the task, since what follows from it reflects the training, not the representation"
    ]
