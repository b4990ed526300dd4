r"""The objective of one transform step, under either algorithm (DESIGN §1.4). Pure torch.

``tta`` (default) optimises the bound it reports:

.. math::
    \min_{D,B,A,\bar A,b}\; \sum_s D_s\bar L_s + H(Y_T|Y_S) + \hat\tau(\bar A, B)\,W_1(P_{S'''}, P_T)
    + \lambda_I(\|A\bar A - I\|^2 + \|\bar A A - I\|^2) + \lambda_P\|p_T - BD\|^2

- :math:`D` enters the transport as the source marginal weights (:math:`a_i = D_{s_i} / c_{s_i}` for
  :math:`c_s` sampled points of class :math:`s`), so it gets the true gradient of :math:`W_1`
  (through the dual potentials: the envelope theorem);
- the plan and the gradient use the same cost (:math:`W_1` itself, differentiated by the estimator);
- :math:`\hat\tau` is the batch maximum of :math:`\|\nabla_z\ell(h'''(z), t)\|` through the whole
  transformed classifier (:func:`tta.bound.lipschitz_constant`), so the trade-off between shrinking
  :math:`W_1` and inflating :math:`\|\bar A\|` is seen by the optimiser;
- the label marginal is kept exactly matched, :math:`BD = p_T`
  (:meth:`tta.transforms.TaskTransform.match_label_marginal`), so no mass is forced across labels.

``faithful`` reproduces the authors' algorithm: source batch drawn per class with
:math:`\lfloor nD_s\rfloor` points, uniform weights, an exact EMD plan on the cost
:math:`\|x - y\| + \lambda\|Be_s - e_t\|` held fixed, and one Adam step on the *squared* cost under that
plan weighted by :math:`\lambda_W = 2`; :math:`D` only moves through the other terms.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta import bound as B
from tta.errors import TTANumericalError
from tta.fitting._config import TransformConfig
from tta.transforms import TaskTransform, matching_label_map

__all__ = [
    "default_objective",
    "faithful_objective",
    "finish_transform",
    "initialise_transform",
    "logit_objective",
    "sample_by_prior",
    "step_objective",
    "transform_optimizer",
]


def sample_by_prior(
    labels: Tensor,
    prior: Tensor,
    total: int,
    generator: torch.Generator,
    rounding: Literal["round", "floor"] = "round",
) -> tuple[Tensor, Tensor]:
    r"""Draw a batch with about ``total · prior[k]`` points of each class, without replacement.

    Args:
        labels: Class ids of the pool, shape ``(n,)``.
        prior: Class prior, shape ``(K,)`` (detached).
        total: Batch size.
        generator: Random generator (the draw is reproducible).
        rounding: ``round`` (at least one point per class with positive prior) or ``floor`` (the authors':
            ⌊total·prior⌋ points, possibly none).

    Returns:
        Indices into the pool and the per-point count of its class in the batch (for the weights
        :math:`a_i = \text{prior}_{k_i} / c_{k_i}`).
    """
    prior = prior.detach().double().cpu()
    indices, counts = [], []
    labels_cpu = labels.cpu()
    for k in range(prior.numel()):
        pool = torch.nonzero(labels_cpu == k).flatten()
        if rounding == "floor":
            c = int(torch.floor(total * prior[k]))
        else:
            c = max(1, round(float(total * prior[k]))) if prior[k] > 0 else 0
        c = min(c, pool.numel())
        if c == 0:
            continue
        pick = pool[torch.randperm(pool.numel(), generator=generator)[:c]]
        indices.append(pick)
        counts.append(torch.full((c,), c, dtype=torch.long))
    return torch.cat(indices).to(labels.device), torch.cat(counts).to(labels.device)


def transform_optimizer(transform: TaskTransform, config: TransformConfig) -> torch.optim.Optimizer | None:
    """Adam over the learnable parameters of ``transform``.

    Learning rates: ``lr_feature_map`` for A, b (and Ā when it is learned), ``lr`` for the label-map
    logits, ``lr_prior`` for the prior logits.
    """
    groups = []
    if transform.feature_map == "logit":  # the logit map's change, at the label-map rate (a K_S x d matrix)
        logit_map = [p for p in (transform.logit_delta, transform.logit_bias_delta) if p.requires_grad]
        if logit_map:
            groups.append({"params": logit_map, "lr": config.lr})
    learn_inverse = config.algorithm == "faithful" or config.inverse == "learned"
    feature_map = [transform.matrix, transform.shift] + ([transform.inverse] if learn_inverse else [])
    feature_map = [p for p in feature_map if p.requires_grad]
    if feature_map:
        lr = config.lr if config.lr_feature_map is None else config.lr_feature_map
        groups.append({"params": feature_map, "lr": lr})
    if transform.label_logits.requires_grad:
        groups.append({"params": [transform.label_logits], "lr": config.lr})
    if transform.prior_logits.requires_grad:
        groups.append({"params": [transform.prior_logits], "lr": config.lr_prior})
    return torch.optim.Adam(groups) if groups else None


def default_objective(
    transform: TaskTransform,
    head: nn.Linear,
    class_losses: Tensor,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    target_prior: Tensor,
    distance: Any,
    config: TransformConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step's objective of the ``tta`` algorithm (the bound plus the two penalties).

    Args:
        transform: The transform (its label-map bias is refitted first when configured).
        head: The trained reference classifier (frozen).
        class_losses: Mean reference training loss of each class, shape ``(K_S,)``.
        source: Reference training features and labels.
        target: Target training features and labels.
        target_prior: ``p_T``, shape ``(K_T,)``.
        distance: A :class:`tta.distances.DistanceEstimator`.
        config: Hyper-parameters.
        generator: Random generator for the batch.

    Returns:
        The objective (differentiable) and its detached parts.
    """
    if config.match_label_marginal:
        transform.match_label_marginal(target_prior, adjust="label_map", max_iter=200)
    z_s, y_s = source
    z_t, y_t = target
    prior = transform.prior
    log_b = transform.log_label_map
    label_map = log_b.exp()
    src_idx, src_count = sample_by_prior(y_s, prior, config.batch_size, generator)
    tgt_idx, tgt_count = sample_by_prior(y_t, target_prior, config.batch_size, generator)
    ys, yt = y_s[src_idx], y_t[tgt_idx]
    x = transform.map_features(z_s[src_idx])
    a = prior[ys] / src_count.to(prior)
    # the target class masses are set to the transformed label marginal BD (equal to p_T once matched),
    # so the class masses of both sides agree exactly and W1 splits into one problem per class
    b = (label_map @ prior).detach()[yt] / tgt_count.to(prior)
    b = b * (a.sum().detach() / b.sum())  # float32 round-off (K = 100: 2e-6) must not unbalance the masses
    w1 = distance(
        x,
        z_t[tgt_idx],
        a,
        b,
        label_map.T[ys],
        F.one_hot(yt, transform.num_target_classes).to(x),
        config.label_cost,
    )
    points = [x, z_t[tgt_idx]]
    if config.inverse == "exact":
        # W A^{-1} by an LU solve (differentiable): exact, and O(d^3/3) instead of the penalty's 12 d^3
        logit_map = torch.linalg.solve(transform.matrix.T, head.weight.T).T
        tau = B.lipschitz_constant(points, logit_map, head.bias, log_b, None, transform.shift)
        inv_pen = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        tau = B.lipschitz_constant(points, head.weight, head.bias, log_b, transform.inverse, transform.shift)
        inv_pen = B.inverse_penalty(
            transform.matrix, transform.inverse, config.inverse_penalty_probes, generator
        )
    term1 = B.weighted_source_loss(prior, class_losses)
    entropy = B.conditional_entropy(label_map, prior)
    prior_pen = B.prior_matching_penalty(target_prior.to(prior), label_map, prior)
    bound = B.assemble_bound(term1, entropy, tau, w1)
    objective = bound + config.lambda_i * inv_pen + config.lambda_p * prior_pen
    parts = {
        "objective": objective,
        "bound": bound,
        "weighted_source_loss": term1,
        "conditional_entropy": entropy,
        "w1": w1,
        "tau": tau,
        "tau_w1": tau * w1,
        "inverse_penalty": inv_pen,
        "prior_mismatch": (label_map @ prior - target_prior.to(prior)).abs().sum(),
    }
    return objective, {k: v.detach() for k, v in parts.items()}


def logit_objective(
    transform: TaskTransform,
    head: nn.Linear,
    class_losses: Tensor,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    target_prior: Tensor,
    config: TransformConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""One step's objective of the ``logit`` variant: its bound on a batch, plus the logit-map penalty.

    .. math::
        \sum_s D_s \bar L_s + H(Y_T|Y_S) + \Big(\sum_t \mathrm{OT}_{\Phi}(\mu_t, \nu_t)
        - \mathbb{E}_{S'''}\, g\Big) + \lambda \|\Delta\|_F^2

    (:func:`tta.bound.logit_transport`); only the target logits :math:`(W + \Delta) z' + c + \delta c`
    move, so the gradient is the exact plan's through the odds cost (envelope theorem).

    Args:
        transform: A transform with ``feature_map="logit"``.
        head: The trained reference classifier (frozen).
        class_losses: Mean reference training loss of each class, shape ``(K_S,)``.
        source: Reference training features and labels.
        target: Target training features and labels.
        target_prior: ``p_T``, shape ``(K_T,)``.
        config: Hyper-parameters (``batch_size``, ``logit_weight_decay``).
        generator: Random generator for the batch.

    Returns:
        The objective (differentiable) and its detached parts.
    """
    from tta.distances import transport_cost

    z_s, y_s = source
    z_t, y_t = target
    prior = B.sparse_prior(transform.prior.detach())
    label_map = B.sparse_label_map(transform.label_map.detach())
    src_idx, src_count = sample_by_prior(y_s, prior, config.batch_size, generator)
    tgt_idx, tgt_count = sample_by_prior(y_t, target_prior, config.batch_size, generator)
    ys, yt = y_s[src_idx], y_t[tgt_idx]
    with torch.no_grad():
        u_s = head(z_s[src_idx])
    m, c = transform.logit_map(head.weight.detach(), head.bias.detach())
    u_t = z_t[tgt_idx] @ m.T + c
    a = prior[ys] / src_count.to(prior)
    b = (label_map @ prior)[yt] / tgt_count.to(prior)
    transport, reference = B.logit_transport(u_s, ys, a, u_t, yt, b, label_map, transport_cost)
    term1 = B.weighted_source_loss(prior, class_losses)
    entropy = B.conditional_entropy(label_map, prior)
    distribution = transport - reference
    bound = term1 + entropy + distribution
    penalty = (transform.logit_delta**2).sum()
    objective = bound + config.logit_weight_decay * penalty
    parts = {
        "objective": objective,
        "bound": bound,
        "weighted_source_loss": term1,
        "conditional_entropy": entropy,
        "distribution_term": distribution,
        "transport": transport,
        "logit_map_penalty": penalty,
    }
    return objective, {k: v.detach() for k, v in parts.items()}


def faithful_objective(
    transform: TaskTransform,
    head: nn.Linear,
    class_losses: Tensor,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    target_prior: Tensor,
    config: TransformConfig,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step's objective of the authors' algorithm (exact plan held fixed, squared cost).

    Args:
        transform: The transform.
        head: The trained reference classifier (frozen; only used for the diagnostics).
        class_losses: Mean reference training loss of each class, shape ``(K_S,)``.
        source: Reference training features and labels.
        target: Target training features and labels.
        target_prior: ``p_T``.
        config: Hyper-parameters (``lambda_w``, ``lambda_p``, ``lambda_i``, ``label_cost``).
        generator: Random generator for the batch.

    Returns:
        The objective (differentiable) and its detached parts.
    """
    from tta.distances import emd_plan

    z_s, y_s = source
    z_t, y_t = target
    prior = transform.prior
    label_map = transform.label_map
    src_idx, _ = sample_by_prior(y_s, prior, config.batch_size, generator, rounding="floor")
    tgt_idx, _ = sample_by_prior(y_t, target_prior, config.batch_size, generator, rounding="floor")
    x = transform.map_features(z_s[src_idx])
    y = z_t[tgt_idx]
    x_lab = label_map.T[y_s[src_idx]]
    y_lab = F.one_hot(y_t[tgt_idx], transform.num_target_classes).to(x)
    feat_sq = torch.cdist(x, y).pow(2)
    lab_sq = torch.cdist(x_lab, y_lab).pow(2)
    with torch.no_grad():
        cost = feat_sq.clamp_min(0).sqrt() + config.label_cost * lab_sq.clamp_min(0).sqrt()
        n, m = cost.shape
        plan, _ = emd_plan(cost, torch.full((n,), 1.0 / n), torch.full((m,), 1.0 / m))
    transport = (plan.to(x) * (feat_sq + config.label_cost * lab_sq)).sum()
    term1 = B.weighted_source_loss(prior, class_losses)
    entropy = B.conditional_entropy(label_map, prior)
    prior_pen = B.prior_matching_penalty(target_prior.to(prior), label_map, prior)
    inv_pen = B.inverse_penalty(transform.matrix, transform.inverse)
    objective = (
        term1
        + entropy
        + config.lambda_w * transport
        + config.lambda_p * prior_pen
        + config.lambda_i * inv_pen
    )
    with torch.no_grad():
        w1 = (plan.to(x) * cost.to(x)).sum()
    parts = {
        "objective": objective,
        "weighted_source_loss": term1,
        "conditional_entropy": entropy,
        "w1": w1,
        "transport_sq": transport,
        "inverse_penalty": inv_pen,
        "prior_mismatch": (label_map @ prior - target_prior.to(prior)).abs().sum(),
    }
    return objective, {k: v.detach() for k, v in parts.items()}


def step_objective(
    transform: TaskTransform,
    head: nn.Linear,
    class_losses: Tensor,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    target_prior: Tensor,
    distance: Any,
    config: TransformConfig,
    seed: int,
    step: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective of transform step ``step`` under the configured algorithm.

    Batches are drawn from a generator seeded by ``(seed, step)``, so a resumed fit draws the same ones.

    Raises:
        tta.errors.TTANumericalError: If the objective is not finite (the message names the step, the
            non-finite parts and the fixes).
    """
    # only what the optimiser moves can become non-finite (the logit variant's frozen d x d A, Ā and b are
    # not checked every step: that was a tenth of its step time at d = 1280)
    bad = [
        name
        for name, p in transform.named_parameters()
        if p.requires_grad and not bool(torch.isfinite(p).all())
    ]
    if bad:
        raise TTANumericalError(
            f"the transform's {', '.join(bad)} became NaN or infinite before transform step {step} (phase "
            "'transform'). Fix: lower transform.lr_feature_map and transform.lr, lower "
            "transform.max_condition, or check the features for NaN/Inf"
        )
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 + step)
    if config.algorithm == "faithful":
        objective, parts = faithful_objective(
            transform, head, class_losses, source, target, target_prior, config, generator
        )
    elif config.variant == "logit":
        objective, parts = logit_objective(
            transform, head, class_losses, source, target, target_prior, config, generator
        )
    else:
        objective, parts = default_objective(
            transform, head, class_losses, source, target, target_prior, distance, config, generator
        )
    if not bool(torch.isfinite(objective)):
        bad = sorted(k for k, v in parts.items() if not bool(torch.isfinite(v).all()))
        raise TTANumericalError(
            f"the transform objective became {float(objective.detach())} at transform step {step} (phase "
            f"'transform', algorithm '{config.algorithm}'; non-finite parts: {', '.join(bad)}; all parts: "
            f"{ {k: float(v) for k, v in parts.items()} }). Fix: lower transform.lr_feature_map and "
            "transform.lr (Adam moved the transform too far), lower transform.max_condition so that an "
            "ill-conditioned A stops the fit earlier, or check the features for NaN/Inf"
        )
    return objective, parts


@torch.no_grad()
def finish_transform(transform: TaskTransform, target_prior: Tensor, config: TransformConfig) -> None:
    """End of a fit: refit the label-map bias, and set Ā to A⁻¹ if the ``tta`` algorithm did not learn it."""
    if config.algorithm == "tta":
        if config.match_label_marginal:
            transform.match_label_marginal(target_prior)
        if config.inverse == "exact" and transform.feature_map == "dense":  # a logit map sets Ā itself
            transform.inverse.copy_(transform.exact_inverse())


@torch.no_grad()
def initialise_transform(
    transform: TaskTransform,
    source: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    config: TransformConfig | None = None,
    seed: int = 0,
) -> None:
    r"""Initialise :math:`D` and :math:`B` from the training data, as configured.

    :math:`D_0 = p_S` (logits :math:`\log p_S`; the ``faithful`` algorithm reproduces the authors'
    logits :math:`p_S`); :math:`B_0` by ``label_map_init`` (``matching``: optimal transport between class
    means, :func:`tta.transforms.matching_label_map`); then, for the ``tta`` algorithm, :math:`BD = p_T`.
    The feature map starts at the identity.

    Args:
        transform: The transform, modified in place.
        source: Reference training features and labels.
        target: Target training features and labels.
        config: The transform configuration.
        seed: Seed of the ``random`` label-map initialisation.
    """
    config = config or TransformConfig()
    (z_s, y_s), (z_t, y_t) = source, target
    k_s, k_t = transform.num_source_classes, transform.num_target_classes
    p_s, p_t = B.label_prior(y_s, k_s), B.label_prior(y_t, k_t)
    faithful = config.algorithm == "faithful"
    transform.init_prior(p_s, as_logits=not faithful)
    if config.label_map_init in ("matching", "bound"):  # bound: chosen when the head is trained
        mu_s = torch.stack([z_s[y_s == k].mean(0) for k in range(k_s)])
        mu_t = torch.stack([z_t[y_t == k].mean(0) for k in range(k_t)])
        smoothing = 0.0 if config.variant == "logit" else config.label_map_smoothing  # logit: exact zeros
        transform.init_label_map(matching_label_map(mu_s, mu_t, p_s, p_t), smoothing)
    elif config.label_map_init == "random":
        transform.init_label_map(None, generator=torch.Generator().manual_seed(seed))
    else:
        transform.init_label_map(torch.full((k_t, k_s), 1.0 / k_t), 0.0)
    if config.match_label_marginal and not faithful:
        transform.match_label_marginal(p_t)
