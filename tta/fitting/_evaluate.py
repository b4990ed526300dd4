"""Evaluating the bound and the transformed classifier on test splits. Pure torch."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta import bound as B
from tta.distances import LabelledMeasure
from tta.fitting._config import EvalConfig
from tta.results._types import BoundReport
from tta.transforms import TaskTransform

__all__ = ["EvalTransform", "evaluate_bound", "prepare_evaluation"]


@dataclass(frozen=True)
class EvalTransform:
    r"""The transform as evaluated on a target test split.

    Attributes:
        transform: A copy of the learned transform whose label-map bias is refitted to the target test
            prior (when configured): the learned one is left unchanged.
        inverse: The :math:`A^{-1}` used by the classifier and :math:`\hat\tau` (exact or learned).
        mismatch_before: :math:`\|BD - p_T\|_1` before the refit.
        mismatch: The same after it.
    """

    transform: TaskTransform
    inverse: Tensor
    mismatch_before: float
    mismatch: float


@torch.no_grad()
def prepare_evaluation(transform: TaskTransform, target_labels: Tensor, config: EvalConfig) -> EvalTransform:
    """Copy ``transform``, refit its label-map bias to the prior of ``target_labels``, choose the inverse.

    Args:
        transform: The learned transform (not modified).
        target_labels: Target test labels, shape ``(m,)``.
        config: ``match_label_marginal`` and ``inverse``.
    """
    t = copy.deepcopy(transform)
    p_eval = B.label_prior(target_labels, t.num_target_classes, dtype=torch.float64)
    before = float((t.label_map.double() @ t.prior.double() - p_eval).abs().sum())
    after = t.match_label_marginal(p_eval) if config.match_label_marginal else before
    exact = config.inverse == "exact" and t.feature_map == "dense"  # a logit map's Ā is exact already
    inverse = t.exact_inverse() if exact else t.inverse.detach()
    return EvalTransform(t, inverse, before, after)


def _classwise_w1(
    distance: Any, x: Tensor, x_hard: Tensor, y: Tensor, y_labels: Tensor, num_classes: int
) -> tuple[Tensor, dict[str, Any]]:
    total, results = x.new_zeros(()), []
    for t in range(num_classes):
        xs, yt = x[x_hard == t], y[y_labels == t]
        if xs.shape[0] == 0 or yt.shape[0] == 0:
            raise ValueError(
                f"classwise W1: target class {t} has {yt.shape[0]} target and {xs.shape[0]} mapped reference "
                "points; every class needs both (use w_eval='joint')"
            )
        result = distance.estimate(LabelledMeasure(xs), LabelledMeasure(yt))
        total = total + result.value
        results.append(result)
    info = {
        "estimator": results[0].estimator,
        "path": "classwise",
        "solver": "+".join(sorted({s for r in results for s in (r.solver or "").split("+") if s})) or None,
        "converged": all(r.converged for r in results),
        "warning": next((r.warning for r in results if r.warning), None),
        "num_subproblems": sum(len(r.subproblems) for r in results),
        "seconds": sum(r.seconds for r in results),
    }
    return total / len(results), info


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _evaluate_logit(
    ev: EvalTransform,
    head: nn.Linear,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    config: EvalConfig,
    diagnostics: bool,
    terms_only: bool,
) -> BoundReport:
    """The ``logit`` variant's bound (:func:`tta.bound.logit_transport`) on test splits, in float64."""
    from tta.distances import transport_cost

    t = ev.transform
    (z_s, y_s), (z_t, y_t) = source, target
    k_s, k_t = t.num_source_classes, t.num_target_classes
    prior = B.sparse_prior(t.prior.double())
    label_map = B.sparse_label_map(t.label_map.double())
    w, c = head.weight.detach().double(), head.bias.detach().double()
    u_s = z_s.double() @ w.T + c
    m, c_t = t.logit_map(w, c)
    u_t = z_t.double() @ m.detach().double().T + c_t.detach().double()
    class_losses = B.class_mean_losses(F.cross_entropy(u_s, y_s, reduction="none"), y_s, k_s)
    term1 = float(B.weighted_source_loss(prior, class_losses))
    entropy = float(B.conditional_entropy(label_map, prior))
    counts = B.class_counts(y_s, k_s).to(prior)
    a = prior[y_s] / counts[y_s]
    b = (label_map @ prior)[y_t] / B.class_counts(y_t, k_t).to(prior)[y_t]
    transport, reference = B.logit_transport(u_s, y_s, a, u_t, y_t, b, label_map, transport_cost)
    distribution = float(transport) - float(reference)
    bound = term1 + entropy + distribution
    trivial = float(B.label_entropy(B.label_prior(y_t, k_t, dtype=torch.float64)))
    common = {
        "weighted_source_loss": term1,
        "conditional_entropy": entropy,
        "tau": None,
        "w1": None,
        "tau_w1": distribution,
        "bound": bound,
        "variant": "logit",
        "trivial_level": trivial,
        "transport": float(transport),
    }
    if terms_only:
        return BoundReport(**common)
    losses = B.label_losses(u_t, label_map)  # the certified classifier's losses, every label
    extra: dict[str, Any] = t.diagnostics() if diagnostics else {}
    return BoundReport(
        **common,
        transformed_target_ce=float(losses.gather(1, y_t.unsqueeze(1)).mean()),
        transformed_target_acc=float((losses.argmin(-1) == y_t).double().mean()),
        transformed_source_ce=float(reference),
        label_mismatch_before_matching=ev.mismatch_before,
        label_mismatch=ev.mismatch,
        label_map_is_hard=bool((label_map.max(dim=0).values == 1).all()),
        num_source_test=int(z_s.shape[0]),
        num_target_test=int(z_t.shape[0]),
        w_eval="joint",
        tau_mode=config.tau_mode,
        inverse=config.inverse,
        distance={"estimator": "exact", "path": "per_label", "solver": "exact", "space": "logits"},
        prior=tuple(prior.cpu().tolist()),
        label_map=tuple(tuple(row) for row in label_map.cpu().tolist()),
        **extra,
    )


@torch.no_grad()
def evaluate_bound(
    transform: TaskTransform,
    head: nn.Linear,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    distance: Any,
    config: EvalConfig | None = None,
    label_cost: float = 1e6,
    diagnostics: bool = True,
    terms_only: bool = False,
) -> BoundReport:
    """Evaluate every term of the bound and the loss of the transformed classifier on test splits.

    The reference points carry the weights :math:`D_s / n_s` and, expanded over target labels, the
    label vectors :math:`B e_s`; the target points are uniform. The transform is copied
    (:func:`prepare_evaluation`), so the label-map bias refitted to the target test prior does not change
    ``transform``.

    Args:
        transform: The learned transform.
        head: The reference classifier :math:`h_S`.
        source: Reference test features and labels.
        target: Target test features and labels.
        distance: A :class:`tta.distances.DistanceEstimator`.
        config: Evaluation options.
        label_cost: λ of the joint ground cost.
        diagnostics: Also report cond(A), its smallest singular value and ‖AĀ − I‖ (an SVD of A; the
            best-state selection, which only needs the bound, skips it).
        terms_only: Fill in only the four terms, τ̂ and the bound (and the estimator's diagnostics), with
            the same values as the full evaluation: the best-state selection skips the transformed
            classifier's losses, the certified and learned-inverse τ̂ (a second pass over every point and
            label) and the diagnostics.

    Returns:
        A :class:`~tta.results.BoundReport`.
    """
    config = config or EvalConfig()
    z_s, y_s = source
    z_t, y_t = target
    ev = prepare_evaluation(transform, y_t, config)
    if ev.transform.feature_map == "logit":
        return _evaluate_logit(ev, head, source, target, config, diagnostics, terms_only)
    t, inverse = ev.transform, ev.inverse
    k_s, k_t = t.num_source_classes, t.num_target_classes
    prior, log_b = t.prior, t.log_label_map
    label_map = log_b.exp()
    w, c = head.weight.detach(), head.bias.detach()

    source_losses = F.cross_entropy(head(z_s), y_s, reduction="none")
    class_losses = B.class_mean_losses(source_losses, y_s, k_s)
    term1 = B.weighted_source_loss(prior, class_losses)
    entropy = B.conditional_entropy(label_map, prior)

    x = t.map_features(z_s)
    if config.w_eval == "joint":
        counts = B.class_counts(y_s, k_s).to(prior)
        a = prior[y_s] / counts[y_s]
        b = torch.full((z_t.shape[0],), 1.0 / z_t.shape[0], dtype=x.dtype, device=x.device)
        result = distance.estimate(
            LabelledMeasure(x, a, label_map.T[y_s]),
            LabelledMeasure(z_t, b, F.one_hot(y_t, k_t).to(x)),
            label_cost,
        )
        w1, distance_info = result.value, result.to_dict()
    else:
        w1, distance_info = _classwise_w1(distance, x, label_map.argmax(dim=0)[y_s], z_t, y_t, k_t)

    if config.tau_mode == "full":
        tau = B.lipschitz_constant([x, z_t], w, c, log_b, inverse, t.shift)
    else:  # the authors' variant: gradient w.r.t. the classifier input u = Ā(z - b)
        u = [(x - t.shift) @ inverse.T, (z_t - t.shift) @ inverse.T]
        tau = B.lipschitz_constant(u, w, c, log_b)
    terms = B.bound_terms(term1, entropy, tau, w1)
    trivial = float(B.label_entropy(B.label_prior(y_t, k_t, dtype=torch.float64)))
    if terms_only:
        return BoundReport(**terms.to_dict(), trivial_level=trivial, distance=_plain(distance_info))
    tau_global = float(B.global_lipschitz_bound(w, inverse))

    log_q_target = B.transformed_log_probs(z_t, w, c, log_b, inverse, t.shift)
    target_ce = F.nll_loss(log_q_target, y_t)
    target_acc = (log_q_target.argmax(-1) == y_t).double().mean()
    log_q_source = B.transformed_log_probs(x, w, c, log_b, inverse, t.shift)
    transformed_source_ce = B.transformed_source_loss(log_q_source, y_s, prior, label_map)
    tau_learned = float(B.lipschitz_constant([x, z_t], w, c, log_b, t.inverse.detach(), t.shift))

    rest = terms.weighted_source_loss + terms.conditional_entropy
    extra: dict[str, Any] = {}
    if distance_info.get("estimate"):
        # W1 was estimated from subsamples (SubsampledDistance): carry the interval
        ci = (float(distance_info["w1_ci_low"]), float(distance_info["w1_ci_high"]))
        extra["w1_ci"] = ci
        extra["bound_ci"] = tuple(rest + terms.tau * v for v in ci)
    if diagnostics:
        extra.update(t.diagnostics())
    return BoundReport(
        **terms.to_dict(),
        trivial_level=trivial,
        tau_global=tau_global,
        bound_certified=rest + tau_global * terms.w1,
        tau_learned_inverse=tau_learned,
        bound_learned_inverse=rest + tau_learned * terms.w1,
        transformed_target_ce=float(target_ce),
        transformed_target_acc=float(target_acc),
        transformed_source_ce=float(transformed_source_ce),
        label_mismatch_before_matching=ev.mismatch_before,
        label_mismatch=ev.mismatch,
        label_map_is_hard=bool((label_map.max(dim=0).values > 1 - 1e-6).all()),
        num_source_test=int(z_s.shape[0]),
        num_target_test=int(z_t.shape[0]),
        w_eval=config.w_eval,
        tau_mode=config.tau_mode,
        inverse=config.inverse,
        label_cost=label_cost,
        distance=_plain(distance_info),
        prior=tuple(prior.detach().cpu().tolist()),
        label_map=tuple(tuple(row) for row in label_map.detach().cpu().tolist()),
        **extra,
    )
