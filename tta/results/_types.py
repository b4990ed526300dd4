r"""Typed, versioned results: the bound of one evaluation and the record of one analysis.

Modelled on POT's and GeomLoss's ``OTResult``: every quantity is an attribute, the JSON form is
:meth:`to_dict` (what ``result.json`` holds) and :meth:`from_dict` reads it back. Pure Python: no torch
tensors, no I/O.

- :class:`BoundReport` — what :func:`tta.fitting.evaluate_bound` returns: the bound, its terms, the
  certified variants of :math:`\hat\tau`, the transformed classifier's target loss, the transform's
  diagnostics and the estimator's.
- :class:`ClassifierMetrics` — target cross-entropy, accuracy and calibration error of one classifier.
- :class:`AnalysisResult` — one run: the :class:`BoundReport` of the test splits, the three classifiers'
  metrics (the transformed classifier :math:`h'''`, the τ-penalised probe, the standard probe), the
  numerical record, timings and the data summary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SCHEMA_VERSION", "AnalysisResult", "BoundReport", "ClassifierMetrics", "ConditionRecord"]

#: Version of the layout of :meth:`AnalysisResult.to_dict` (``schema_version`` in ``result.json``).
#: 1: the untyped record of tta ≤ 0.1 (no ``schema_version`` key); 2: this layout.
SCHEMA_VERSION = 2

#: The keys of :meth:`BoundReport.to_dict` that are the bound and its terms (``terms`` in ``result.json``).
TERM_KEYS = ("weighted_source_loss", "conditional_entropy", "tau_w1", "tau", "w1")


@dataclass(frozen=True)
class BoundReport:
    r"""The bound on the target loss of the transformed classifier :math:`h'''`, and what it rests on.

    Fields after ``bound`` are ``None`` where they were not computed (a ``terms_only`` evaluation).

    Attributes:
        weighted_source_loss: Term 1, :math:`\sum_s D_s \bar L_s` (reference test loss re-weighted by D).
        conditional_entropy: Term 2, :math:`H(Y_T \mid Y_S)`.
        tau: :math:`\hat\tau`, the Lipschitz constant of the loss in the feature, measured on the points
            (``paper`` variant; ``None`` for ``logit``).
        w1: :math:`W_1(P_{S'''}, P_T)` (``paper``; ``None`` for ``logit``).
        tau_w1: Term 3, the distribution mismatch: :math:`\hat\tau W_1` (``paper``), or the logit-space
            transport minus the transformed-reference loss (``logit``; docs/method.md).
        bound: The sum of the three terms.
        variant: ``paper`` or ``logit`` (:class:`~tta.fitting.TransformConfig`), the bound it is.
        transport: ``logit``: the transport value :math:`\sum_t \mathrm{OT}_\Phi(\mu_t, \nu_t)`, an
            upper bound on the target loss of :math:`h'''` by itself.
        trivial_level: :math:`H(\hat p_T)`, the target cross-entropy of predicting the target test prior
            (``log K_T`` when balanced). A bound at or above it certifies nothing (:attr:`vacuous`).
        tau_global: A data-free, certified :math:`\sqrt2\,\|W A^{-1}\|_2 \ge \hat\tau`.
        bound_certified: The bound with ``tau_global`` in place of :math:`\hat\tau`.
        tau_learned_inverse: :math:`\hat\tau` through the learned :math:`\bar A` instead of :math:`A^{-1}`.
        bound_learned_inverse: The bound with ``tau_learned_inverse``.
        transformed_target_ce: Target test cross-entropy of :math:`h'''` (what the bound covers).
        transformed_target_acc: Target test accuracy of :math:`h'''`.
        transformed_source_ce: Loss of :math:`h'''` on the transformed reference distribution (at most
            terms 1 + 2, by the label lemma).
        label_mismatch_before_matching: :math:`\|BD - p_T\|_1` before the label-map bias is refitted to the
            target test prior.
        label_mismatch: The same after the refit.
        label_map_is_hard: Whether every column of :math:`B` is one-hot (the bound then covers the probe's
            label space exactly).
        num_source_test: Reference test points.
        num_target_test: Target test points.
        w_eval: ``joint`` or ``classwise`` (:class:`~tta.fitting.EvalConfig`).
        tau_mode: ``full`` or ``reference``.
        inverse: ``exact`` or ``learned``.
        label_cost: :math:`\lambda` of the joint ground cost.
        distance: The estimator's diagnostics of the :math:`W_1` evaluation (plain values).
        prior: :math:`D`, one float per reference class.
        label_map: :math:`B`, ``K_T`` rows of ``K_S`` floats.
        cond_A: cond(A) (``None`` when the diagnostics were not computed).
        min_singular_value_A: The smallest singular value of A.
        inverse_error: :math:`\|A\bar A - I\|_F`.
        w1_ci: A 95 % interval of :math:`W_1` when it was estimated from subsamples, else ``None``.
        bound_ci: The bound's interval from ``w1_ci``.
    """

    weighted_source_loss: float
    conditional_entropy: float
    tau: float | None
    w1: float | None
    tau_w1: float
    bound: float
    variant: str = "paper"
    trivial_level: float | None = None
    transport: float | None = None
    tau_global: float | None = None
    bound_certified: float | None = None
    tau_learned_inverse: float | None = None
    bound_learned_inverse: float | None = None
    transformed_target_ce: float | None = None
    transformed_target_acc: float | None = None
    transformed_source_ce: float | None = None
    label_mismatch_before_matching: float | None = None
    label_mismatch: float | None = None
    label_map_is_hard: bool | None = None
    num_source_test: int | None = None
    num_target_test: int | None = None
    w_eval: str | None = None
    tau_mode: str | None = None
    inverse: str | None = None
    label_cost: float | None = None
    distance: dict[str, Any] = field(default_factory=dict)
    prior: tuple[float, ...] = ()
    label_map: tuple[tuple[float, ...], ...] = ()
    cond_A: float | None = None
    min_singular_value_A: float | None = None
    inverse_error: float | None = None
    w1_ci: tuple[float, float] | None = None
    bound_ci: tuple[float, float] | None = None

    @property
    def vacuous(self) -> bool | None:
        """Whether the bound is at or above the trivial level (``None`` when that is unknown)."""
        return None if self.trivial_level is None else bool(self.bound >= self.trivial_level)

    @property
    def w1_is_estimate(self) -> bool:
        """Whether :math:`W_1` was estimated from subsamples (``w1_ci`` then holds its interval)."""
        return self.w1_ci is not None

    @property
    def terms(self) -> dict[str, float]:
        r"""The three terms, :math:`\hat\tau` and :math:`W_1` (the ``terms`` of ``result.json``)."""
        return {k: getattr(self, k) for k in TERM_KEYS}

    def to_dict(self, with_transform: bool = True) -> dict[str, Any]:
        """A flat, JSON-ready dict of the fields that were computed (``None`` ones are left out).

        Args:
            with_transform: Include ``prior`` and ``label_map``.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:  # not computed (a terms-only evaluation, no diagnostics, an exact W1)
                continue
            if f.name in ("prior", "label_map") and not with_transform:
                continue
            if f.name == "w1_ci":
                out["w1_is_estimate"] = True
            out[f.name] = _plain(value)
            if f.name == "trivial_level":
                out["vacuous"] = self.vacuous
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoundReport:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("w1_ci", "bound_ci") and value is not None:
                value = tuple(float(v) for v in value)
            elif f.name == "prior":
                value = tuple(float(v) for v in value)
            elif f.name == "label_map":
                value = tuple(tuple(float(v) for v in row) for row in value)
            elif f.name == "distance":
                value = dict(value or {})
            kwargs[f.name] = _number(value)
        return cls(**kwargs)


@dataclass(frozen=True)
class ClassifierMetrics:
    """Target test metrics of one classifier.

    Attributes:
        target_ce: Mean cross-entropy (nats).
        target_acc: Accuracy in [0, 1].
        target_ece: Expected calibration error (15 bins).
    """

    target_ce: float
    target_acc: float
    target_ece: float = math.nan

    def to_dict(self) -> dict[str, float]:
        """``{"target_ce", "target_acc", "target_ece"}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierMetrics:
        """The inverse of :meth:`to_dict`."""
        return cls(
            _number(data["target_ce"]), _number(data["target_acc"]), _number(data.get("target_ece", math.nan))
        )


@dataclass(frozen=True)
class ConditionRecord:
    """Where the cond(A) guard stopped the transform phase (``transform.max_condition``).

    Attributes:
        stopped_ill_conditioned_at: The transform step whose A was ill-conditioned (``None``: not stopped).
        cond_A_at_stop: cond(A) then.
        max_condition: The threshold.
    """

    stopped_ill_conditioned_at: int | None = None
    cond_A_at_stop: float | None = None
    max_condition: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The three fields."""
        return asdict(self)


@dataclass(frozen=True)
class AnalysisResult:
    r"""One analysis: the bound on the test splits beside what it predicts.

    Attributes:
        report: The bound, its terms and diagnostics (:class:`BoundReport`).
        transformed_classifier: Target metrics of :math:`h'''` (what the bound covers).
        probe: Target metrics of the τ-penalised probe (transferability, what the bound predicts).
        standard_probe: Target metrics of the standard L2 logistic probe (what users train).
        source_test_acc: Test accuracy of the reference classifier :math:`h_S` on its own task.
        numerics: Where the cond(A) guard stopped the fit, if it did.
        warnings: The run's numerical warnings, one line each.
        determinism: Whether torch's deterministic algorithms were on (and warn-only).
        seed: Seed of the fit.
        mode: Transform mode (``learned_all``...).
        algorithm: ``tta`` or ``faithful``.
        timings: Seconds per phase (and ``selected_step``, ``transform_stopped_at`` when set).
        data: Sizes, class names and fingerprints of the feature splits.
        label_map_choice: ``transform.label_map_init: bound``: the candidate :math:`(D, B)` kept
            (``chosen``) and every candidate's bound on the selection data (``scores``); else ``None``.
        schema_version: :data:`SCHEMA_VERSION`.
    """

    report: BoundReport
    transformed_classifier: ClassifierMetrics
    probe: ClassifierMetrics
    standard_probe: ClassifierMetrics
    source_test_acc: float = math.nan
    numerics: ConditionRecord = field(default_factory=ConditionRecord)
    warnings: tuple[str, ...] = ()
    determinism: dict[str, bool] = field(default_factory=dict)
    seed: int = 0
    mode: str = "learned_all"
    algorithm: str = "tta"
    timings: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    label_map_choice: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def bound(self) -> float:
        """The bound (the sum of its three terms)."""
        return self.report.bound

    @property
    def gap(self) -> float:
        """Bound minus the τ-penalised probe's target CE."""
        return self.report.bound - self.probe.target_ce

    @property
    def bound_covers_probe_exactly(self) -> bool:
        """Whether B is a hard map, so that the bound covers a classifier of the probe's label space."""
        return bool(self.report.label_map_is_hard)

    def with_timings(self, **extra: float) -> AnalysisResult:
        """A copy with ``extra`` added to :attr:`timings`."""
        from dataclasses import replace

        return replace(self, timings={**self.timings, **extra})

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``result.json`` (without the run's config, versions and checkpoint)."""
        return {
            "schema_version": self.schema_version,
            "bound": self.report.bound,
            "trivial_level": self.report.trivial_level,
            "vacuous": self.report.vacuous,
            "terms": self.report.terms,
            "transformed_classifier": self.transformed_classifier.to_dict(),
            "probe": self.probe.to_dict(),
            "standard_probe": self.standard_probe.to_dict(),
            "gap": self.gap,
            "bound_covers_probe_exactly": self.bound_covers_probe_exactly,
            "reference_classifier": {"source_test_acc": self.source_test_acc},
            "details": {**self.report.to_dict(with_transform=False), **self.numerics.to_dict()},
            "warnings": list(self.warnings),
            "determinism": dict(self.determinism),
            "prior": list(self.report.prior),
            "label_map": [list(row) for row in self.report.label_map],
            "seed": self.seed,
            "mode": self.mode,
            "algorithm": self.algorithm,
            "timings": dict(self.timings),
            "data": dict(self.data),
            "label_map_choice": _plain(self.label_map_choice),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisResult:
        """Read a ``result.json`` (or :meth:`to_dict`) back; extra keys (config, versions...) are ignored.

        Raises:
            ValueError: If the record is of a newer schema than this tta reads, or not a result record.
        """
        version = int(data.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"result record of schema version {version}; this tta reads up to "
                f"{SCHEMA_VERSION}: upgrade tta"
            )
        try:
            details = dict(data["details"])
            report = BoundReport.from_dict(
                {**details, "prior": data.get("prior", ()), "label_map": data.get("label_map", ())}
            )
            numerics = ConditionRecord(
                **{
                    k: details.get(k)
                    for k in ("stopped_ill_conditioned_at", "cond_A_at_stop", "max_condition")
                }
            )
            return cls(
                report=report,
                transformed_classifier=ClassifierMetrics.from_dict(data["transformed_classifier"]),
                probe=ClassifierMetrics.from_dict(data["probe"]),
                standard_probe=ClassifierMetrics.from_dict(data["standard_probe"]),
                source_test_acc=_number(
                    data.get("reference_classifier", {}).get("source_test_acc", math.nan)
                ),
                numerics=numerics,
                warnings=tuple(data.get("warnings") or ()),
                determinism=dict(data.get("determinism") or {}),
                seed=int(data.get("seed", 0)),
                mode=str(data.get("mode", "learned_all")),
                algorithm=str(data.get("algorithm", "tta")),
                timings={k: _number(v) for k, v in (data.get("timings") or {}).items()},
                data=dict(data.get("data") or {}),
                label_map_choice=data.get("label_map_choice"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a tta result record: missing or malformed field {err}") from None


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON arrays), everything else unchanged."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _number(value: Any) -> Any:
    """Non-finite floats that JSON stored as strings (``"nan"``, ``"inf"``) back as floats."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value
