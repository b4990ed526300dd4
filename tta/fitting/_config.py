"""The configuration of a fit: how the transform is learned and how the bound is evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tta.errors import TTAInputError
from tta.heads import check_integer, check_number
from tta.transforms import MODES, Mode

__all__ = ["EvalConfig", "TransformConfig"]


@dataclass
class TransformConfig:
    r"""How the transform is learned.

    Args:
        mode: ``learned_all`` (learn D, B, A, b), ``learned_a`` (only the feature map) or ``fixed_all``.
        algorithm: ``tta`` (optimise the reported bound; default) or ``faithful`` (the authors' steps).
        variant: Which bound is learned and reported (docs/method.md). ``paper``: the authors' bound,
            :math:`\hat\tau\,W_1` between the transformed reference and the target in feature space.
            ``logit``: the distribution term is a transport in the reference classifier's logit space
            with the odds cost :math:`\Phi` (:func:`tta.bound.logit_transport`), rigorous for any head
            (no Lipschitz constant) and cheap (a ``K_S``-dimensional problem); the feature map is learned
            through the logit map (:class:`~tta.transforms.TaskTransform` ``feature_map="logit"``), B is the
            exact optimal-transport matching of class means (``label_map_smoothing`` is ignored) and D the
            reference prior, both kept. Use it with an unpenalised reference head
            (``source_head.w_gp: 0``), which the penalty no longer needs to keep near uniform.
        logit_weight_decay: ``logit`` variant: weight of the penalty :math:`\|\Delta\|_F^2` on the change of
            the logit map (keeps the mapped target logits from overfitting the training split).
        steps: Optimisation steps (2001 in the paper for large models, 1001 for small ones).
        batch_size: Points per side per step (1000 for d=512, 2500 for d=2048, 500 for small models).
        lr: Adam learning rate of the label-map logits (and of the logit map of the ``logit`` variant).
        lr_prior: Adam learning rate of the prior logits.
        label_cost: λ of the joint ground cost ‖z − z'‖ + λ‖y − y'‖ (1e6 for standardised features).
        lambda_w: Weight of the transport term in the ``faithful`` objective.
        lambda_p: Weight of the prior-matching penalty ‖p_T − BD‖².
        lambda_i: Weight of the inverse penalty ‖AĀ − I‖² + ‖ĀA − I‖².
        inverse_penalty_probes: Random probes of the Hutchinson estimate of the inverse penalty when the
            ``tta`` algorithm learns Ā (``inverse: learned``; O(d²k) instead of O(d³) per step); 0
            computes it exactly. The ``faithful`` algorithm always computes it exactly.
        inverse: ``exact`` (default for ``tta``): τ̂ uses W A⁻¹ from an LU solve, differentiated exactly,
            and Ā is not learned (it is set to A⁻¹ at the end); ``learned``: learn Ā with the inverse
            penalty, as the authors (always so for ``faithful``).
        lr_feature_map: Adam learning rate of A, Ā and b (``None``: ``lr``). Adam moves every entry of the
            d×d matrix by about this much per step, so high-dimensional features want a small value.
        select_every: ``tta`` algorithm: every this many steps, evaluate the bound on a fixed subset of
            the training data and keep the best transform seen (the initial one included); 0 disables.
        select_points: Points per task in that selection subset.
        label_map_init: ``matching`` (optimal transport between class means; default), ``random``
            (uniform [0, 1) logits, as the authors), ``uniform``, or ``bound`` (``logit`` variant only:
            at the start of the transform phase, the :math:`(D, B)` of lowest bound on the selection data
            among :func:`tta.transforms.label_map_candidates`, D included; ``matching`` until then).
        label_map_smoothing: Mixing weight of the uniform map in the ``matching`` initialisation.
        match_label_marginal: Keep BD = p_T exactly by refitting the label-map bias (``tta`` algorithm).
        patience: Convergence-based stopping (``tta`` algorithm with ``select_every > 0``): stop the fit
            after this many consecutive selection evaluations that did not lower the best selection
            bound by more than a relative ``min_improvement`` (default 2: with ``select_every: 25`` a fit
            runs at least 50 steps); 0 always runs ``steps`` steps. The best state seen is returned
            either way. On the benchmark pairs the default stops after 50–125 of 300 steps at a bound
            within 2.5% of the full run's (docs/performance.md).
        min_improvement: Relative decrease of the selection bound that counts as progress for
            ``patience`` (default 0.01, 1%).
        max_condition: Largest condition number cond(A) = σ_max/σ_min the feature map may reach. cond(A)
            is computed (one SVD of A) at every selection step (every ``select_every`` steps, or every 25
            steps when selection is off) and after the last step; above this value the fit warns with
            :class:`~tta.errors.NumericalWarning`, stops the transform phase early and keeps the last
            well-conditioned state (the best one when selecting), and the result records
            ``stopped_ill_conditioned_at``. ``None`` disables the check. A is stored in float32, so
            ‖A⁻¹A − I‖ of the inverse used by the bound grows like cond(A)·2⁻²³: about 0.1 at 1e6.
    """

    mode: Mode = "learned_all"
    algorithm: Literal["tta", "faithful"] = "tta"
    variant: Literal["paper", "logit"] = "paper"
    steps: int = 300
    batch_size: int = 1000
    lr: float = 1e-2
    lr_prior: float = 1e-3
    label_cost: float = 1e6
    lambda_w: float = 2.0
    lambda_p: float = 1.0
    lambda_i: float = 1.0
    inverse_penalty_probes: int = 64
    inverse: Literal["exact", "learned"] = "exact"
    lr_feature_map: float | None = 1e-3
    select_every: int = 25
    select_points: int = 2000
    label_map_init: Literal["matching", "random", "uniform", "bound"] = "matching"
    label_map_smoothing: float = 0.01
    match_label_marginal: bool = True
    patience: int = 2
    min_improvement: float = 0.01
    max_condition: float | None = 1e6
    logit_weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "logit"):
            raise ValueError(f"transform.variant must be 'paper' or 'logit', got {self.variant!r}")
        if self.variant == "logit" and self.algorithm == "faithful":
            raise ValueError(
                "transform.variant 'logit' is learned by the 'tta' algorithm only (the faithful algorithm is "
                "the authors' steps for the paper's bound): set transform.algorithm: tta"
            )
        if self.label_map_init == "bound" and self.variant != "logit":
            raise ValueError(
                "transform.label_map_init 'bound' chooses a hard label map and a prior with zeros, which "
                "only the logit variant's bound is made for: set transform.variant: logit, or "
                "label_map_init: matching"
            )

    def validate(self, where: str = "transform") -> None:
        """Check every field; the error names ``<where>.<field>`` and what it must be.

        Args:
            where: The config's name in the user's terms (``model.transform``).

        Raises:
            tta.errors.TTAInputError: For the first invalid field.
        """
        _choice(where, "mode", self.mode, MODES)
        _choice(where, "algorithm", self.algorithm, ("tta", "faithful"))
        _choice(where, "inverse", self.inverse, ("exact", "learned"))
        _choice(where, "label_map_init", self.label_map_init, ("matching", "random", "uniform", "bound"))
        check_integer(where, "steps", self.steps, low=0)
        check_integer(where, "batch_size", self.batch_size, low=1)
        for name in ("lr", "lr_prior"):  # 0 freezes that part of the transform
            check_number(where, name, getattr(self, name), low=0.0)
        check_number(where, "label_cost", self.label_cost, low=0.0, strict=True)
        if self.lr_feature_map is not None:
            check_number(where, "lr_feature_map", self.lr_feature_map, low=0.0)
        for name in ("lambda_w", "lambda_p", "lambda_i", "min_improvement", "logit_weight_decay"):
            check_number(where, name, getattr(self, name), low=0.0)
        check_integer(where, "inverse_penalty_probes", self.inverse_penalty_probes, low=0)
        check_integer(where, "select_every", self.select_every, low=0)
        check_integer(where, "select_points", self.select_points, low=1)
        check_integer(where, "patience", self.patience, low=0)
        check_number(where, "label_map_smoothing", self.label_map_smoothing, low=0.0, high=1.0)
        if self.max_condition is not None:
            check_number(where, "max_condition", self.max_condition, low=1.0, strict=True)


@dataclass
class EvalConfig:
    """How the bound is evaluated on the test splits.

    Args:
        w_eval: ``joint`` (exact W₁ between the transformed reference and target joint distributions;
            default) or ``classwise`` (the authors': labels hardened by argmax, W₁ per class averaged
            uniformly over classes).
        tau_mode: ``full`` (τ̂ through the whole transformed classifier w.r.t. the feature; default) or
            ``reference`` (the authors' code: w.r.t. the classifier input Ā(z − b), missing a factor ‖Ā‖).
        inverse: ``exact`` (A⁻¹ by an LU solve; default) or ``learned`` (the learned Ā).
        match_label_marginal: Refit the label-map bias so that BD equals the target test prior.
    """

    w_eval: Literal["joint", "classwise"] = "joint"
    tau_mode: Literal["full", "reference"] = "full"
    inverse: Literal["exact", "learned"] = "exact"
    match_label_marginal: bool = True

    def validate(self, where: str = "evaluation") -> None:
        """Check every field; the error names ``<where>.<field>``.

        Raises:
            tta.errors.TTAInputError: For the first invalid field.
        """
        _choice(where, "w_eval", self.w_eval, ("joint", "classwise"))
        _choice(where, "tau_mode", self.tau_mode, ("full", "reference"))
        _choice(where, "inverse", self.inverse, ("exact", "learned"))


def _choice(where: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TTAInputError(
            f"{where}.{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
