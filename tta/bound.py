r"""The terms of the task-transfer bound, one pure-torch function each.

Notation (DESIGN §1): a frozen encoder gives features :math:`z \in \mathbb{R}^d`. The reference
(source) task has :math:`K_S` classes and a linear classifier :math:`h_S(z) = \mathrm{softmax}(Wz + c)`;
the target task has :math:`K_T` classes and prior :math:`p_T`. The reference task is transformed by a
class prior :math:`D \in \Delta^{K_S}`, a column-stochastic label map :math:`B \in \mathbb{R}^{K_T \times
K_S}` (:math:`B_{ts} = P(t \mid s)`) and an invertible affine map :math:`z \mapsto Az + b`. The
transformed classifier is

.. math:: h'''(z) = B\,\mathrm{softmax}\big(W A^{-1}(z - b) + c\big),

and for every such transform [1]_

.. math::
    \mathbb{E}_{T}\,\ell(h'''(z), y) \le \sum_s D_s \bar L_s + H(Y_T \mid Y_S)
    + \hat\tau \, W_1(P_{S'''}, P_T),

where :math:`\bar L_s` is the mean reference loss of class :math:`s`, :math:`H(Y_T|Y_S) = -\sum_s D_s
\sum_t B_{ts}\log B_{ts}` and :math:`\hat\tau` is the Lipschitz constant of :math:`\ell(h'''(z), y)` in
:math:`z`.

Nothing here knows about Lightning, files or devices.

References:
    .. [1] A. Mehra, Y. Zhang, J. Hamm. "Understanding the Transferability of Representations via
       Task-Relatedness". NeurIPS 2024 (arXiv:2307.00823).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LABEL_MAP_ZERO",
    "BoundTerms",
    "assemble_bound",
    "bound_terms",
    "class_counts",
    "class_mean_losses",
    "conditional_entropy",
    "global_lipschitz_bound",
    "gradient_norms",
    "importance_weighted_loss",
    "inverse_penalty",
    "label_entropy",
    "label_losses",
    "label_prior",
    "lipschitz_constant",
    "log_floor",
    "log_odds_displacement",
    "logit_transport",
    "odds_transport_cost",
    "prior_matching_penalty",
    "safe_log_label_map",
    "sparse_label_map",
    "sparse_prior",
    "transformed_log_probs",
    "transformed_source_loss",
    "weighted_source_loss",
]


def log_floor(dtype: torch.dtype) -> float:
    r"""The floor of :math:`\log B`: the log of the smallest positive normal number of ``dtype``.

    About :math:`-87.3` in float32 and :math:`-708.4` in float64. Flooring :math:`\log B` there raises
    each transformed probability :math:`\sum_s B_{ts} p_s` by at most :math:`K_S` times that number
    (:math:`10^{-36}` in float32), far below the resolution of the dtype, and keeps every term finite when
    :math:`B` has exact zeros: :math:`\log 0 = -\infty` would give :math:`0 \cdot (-\infty) =` NaN in the
    transformed loss, and NaN gradients through the log-sum-exp when a whole row of :math:`B` is zero.

    Args:
        dtype: A floating-point dtype.

    Returns:
        :math:`\log(\text{finfo(dtype).tiny})`, rounded towards zero in ``dtype`` (so that the floor is a
        value of ``dtype`` whose exponential is still a normal number).
    """
    value = math.log(torch.finfo(dtype).tiny)
    rounded = torch.tensor(value, dtype=dtype)
    if float(rounded) < value:
        rounded = torch.nextafter(rounded, torch.zeros((), dtype=dtype))
    return float(rounded)


def safe_log_label_map(log_label_map: Tensor) -> Tensor:
    r""":math:`\log B` floored at :func:`log_floor` (``-inf`` and smaller entries become the floor).

    NaN entries stay NaN: they mean a bug upstream, which the floor must not hide.

    Args:
        log_label_map: :math:`\log B`, any shape.

    Returns:
        The floored tensor (same shape and dtype; differentiable, with zero gradient where floored).
    """
    return log_label_map.clamp_min(log_floor(log_label_map.dtype))


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Number of samples of each class.

    Args:
        labels: Integer class ids, shape ``(n,)``.
        num_classes: Number of classes ``K``.

    Returns:
        Counts, shape ``(K,)``, int64.
    """
    return torch.bincount(labels.long(), minlength=num_classes)[:num_classes]


def label_prior(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Empirical class prior :math:`\hat p(k) = n_k / n`, shape ``(K,)``."""
    counts = class_counts(labels, num_classes).to(dtype)
    return counts / counts.sum()


def label_entropy(prior: Tensor) -> Tensor:
    r"""The trivial level: the cross-entropy of predicting the class prior itself.

    .. math:: H(p) = -\sum_k p_k \log p_k

    No classifier that uses the features needs to do worse than this (``log K`` for a balanced prior), so
    a bound at or above it is vacuous.

    Args:
        prior: A class prior on the simplex, shape ``(K,)``.

    Returns:
        Scalar, in nats.
    """
    return -torch.special.xlogy(prior, prior).sum()


def class_mean_losses(losses: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    r"""Mean loss of each class, :math:`\bar L_s = \frac{1}{n_s}\sum_{i: s_i = s} \ell_i`.

    Args:
        losses: Per-sample losses, shape ``(n,)``.
        labels: Class ids, shape ``(n,)``.
        num_classes: Number of classes ``K``.

    Returns:
        Shape ``(K,)``.

    Raises:
        ValueError: If a class has no sample (its mean loss is undefined).
    """
    counts = class_counts(labels, num_classes)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"classes {empty} have no samples, so their mean loss is undefined; "
            "give every class at least one sample or drop the empty classes from the task"
        )
    sums = torch.zeros(num_classes, dtype=losses.dtype, device=losses.device)
    sums = sums.index_add(0, labels.long(), losses)
    return sums / counts.to(losses.dtype)


def weighted_source_loss(prior: Tensor, class_losses: Tensor) -> Tensor:
    r"""Term 1 of the bound: the reference loss re-weighted by the class prior :math:`D`.

    .. math:: \mathbb{E}_{S'}[\ell] = \sum_{s=1}^{K_S} D_s \, \bar L_s

    Args:
        prior: Class prior ``D`` on the simplex, shape ``(K_S,)``.
        class_losses: Mean reference loss per class, shape ``(K_S,)``.

    Returns:
        Scalar.
    """
    return (prior * class_losses).sum()


def importance_weighted_loss(losses: Tensor, labels: Tensor, prior: Tensor) -> Tensor:
    r"""Sample form of term 1, by importance weighting with the empirical prior :math:`\hat p_S`.

    .. math:: \frac{1}{n}\sum_i \frac{D_{s_i}}{\hat p_S(s_i)}\,\ell_i = \sum_s D_s \bar L_s

    The identity with :func:`weighted_source_loss` holds exactly on any sample in which every class
    occurs (it is tested).

    Args:
        losses: Per-sample losses, shape ``(n,)``.
        labels: Class ids, shape ``(n,)``.
        prior: Target class prior ``D``, shape ``(K_S,)``.

    Returns:
        Scalar.
    """
    p_hat = label_prior(labels, prior.numel(), dtype=losses.dtype)
    weights = prior.to(losses.dtype)[labels] / p_hat[labels]
    return (weights * losses).mean()


def conditional_entropy(label_map: Tensor, prior: Tensor) -> Tensor:
    r"""Term 2 of the bound: the conditional entropy of target labels given reference labels.

    .. math:: H(Y_T \mid Y_S) = -\sum_{s} D_s \sum_{t} B_{ts} \log B_{ts}

    Zero if and only if every column of :math:`B` is one-hot (with :math:`0 \log 0 = 0`).

    Args:
        label_map: Column-stochastic ``B``, shape ``(K_T, K_S)``.
        prior: Class prior ``D``, shape ``(K_S,)``.

    Returns:
        Scalar, in nats.
    """
    column_entropy = -torch.special.xlogy(label_map, label_map).sum(dim=0)  # (K_S,)
    return (prior * column_entropy).sum()


def transformed_log_probs(
    z: Tensor,
    weight: Tensor,
    bias: Tensor,
    log_label_map: Tensor,
    inverse: Tensor | None = None,
    shift: Tensor | None = None,
) -> Tensor:
    r"""Log-probabilities of the transformed classifier :math:`h'''`, computed stably.

    .. math::
        \log h'''_t(z) = \log \sum_s \exp\big(\log B_{ts}
        + \log\mathrm{softmax}_s(W \bar A (z - b) + c)\big)

    Both logs are finite: ``log_softmax`` of finite logits is finite (logits of :math:`\pm 10^4`
    included), and :math:`\log B` is floored at :func:`log_floor`, so a label map with exact zeros (even
    a zero row: a target class that no reference class maps to) gives finite log-probabilities and
    finite gradients.

    Args:
        z: Features, shape ``(n, d)``.
        weight: Reference classifier weight ``W``, shape ``(K_S, d)``.
        bias: Reference classifier bias ``c``, shape ``(K_S,)``.
        log_label_map: :math:`\log B`, shape ``(K_T, K_S)``; ``-inf`` entries (:math:`B_{ts} = 0`) are
            allowed: they are floored at :func:`log_floor`.
        inverse: :math:`\bar A \approx A^{-1}`, shape ``(d, d)``; ``None`` for the identity.
        shift: ``b``, shape ``(d,)``; ``None`` for zero.

    Returns:
        Shape ``(n, K_T)``; rows are log-probability vectors.
    """
    u = z if shift is None else z - shift
    log_p = torch.log_softmax(u @ _logit_map(weight, inverse).T + bias, dim=-1)  # (n, K_S)
    log_b = safe_log_label_map(log_label_map)
    return torch.logsumexp(log_b.unsqueeze(0) + log_p.unsqueeze(1), dim=-1)  # (n, K_T)


def transformed_source_loss(log_probs: Tensor, labels: Tensor, prior: Tensor, label_map: Tensor) -> Tensor:
    r"""Expected loss of :math:`h'''` on the transformed reference distribution.

    Each reference sample of class :math:`s` becomes a sample of class :math:`t` with probability
    :math:`B_{ts}`, and class :math:`s` is re-weighted to :math:`D_s`:

    .. math:: \mathbb{E}_{S'''}[\ell] = \sum_s D_s \sum_t B_{ts}\,
              \frac{1}{n_s}\sum_{i: s_i = s} -\log h'''_t(A z_i + b)

    By the label lemma this is at most :func:`weighted_source_loss` + :func:`conditional_entropy`.

    Args:
        log_probs: :math:`\log h'''` at the transformed reference points, shape ``(n, K_T)``.
        labels: Reference class ids, shape ``(n,)``.
        prior: ``D``, shape ``(K_S,)``.
        label_map: ``B``, shape ``(K_T, K_S)``.

    Returns:
        Scalar.
    """
    per_sample = -(label_map.T[labels] * log_probs).sum(dim=-1)  # (n,)
    return weighted_source_loss(prior, class_mean_losses(per_sample, labels, prior.numel()))


def _logit_map(weight: Tensor, inverse: Tensor | None) -> Tensor:
    r"""The linear map :math:`W\bar A` from features to logits, shape ``(K_S, d)``."""
    return weight if inverse is None else weight @ inverse


def _softmax_jacobian_gram(
    z: Tensor,
    weight: Tensor,
    bias: Tensor,
    log_label_map: Tensor,
    inverse: Tensor | None,
    shift: Tensor | None,
) -> tuple[Tensor, Tensor]:
    m = _logit_map(weight, inverse)  # (K_S, d); cheaper than mapping the points by the (d, d) inverse
    u = z if shift is None else z - shift
    log_p = torch.log_softmax(u @ m.T + bias, dim=-1)  # (n, K_S)
    joint = safe_log_label_map(log_label_map).unsqueeze(0) + log_p.unsqueeze(1)  # (n, K_T, K_S)
    posterior = torch.softmax(joint, dim=-1)  # r_ts = B_ts p_s / q_t
    diff = posterior - log_p.exp().unsqueeze(1)  # (n, K_T, K_S): d(-log q_t)/d logits = p - r_t
    return diff, m @ m.T  # gram (K_S, K_S)


def gradient_norms(
    z: Tensor,
    weight: Tensor,
    bias: Tensor,
    log_label_map: Tensor,
    inverse: Tensor | None = None,
    shift: Tensor | None = None,
    labels: Tensor | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    r"""Norms of :math:`\nabla_z \ell(h'''(z), t)` in closed form, through the whole transformed classifier.

    With :math:`p = \mathrm{softmax}(W\bar A(z-b)+c)` and posterior :math:`r_{ts} = B_{ts}p_s / h'''_t`,

    .. math:: \nabla_z\big(-\log h'''_t(z)\big) = \bar A^\top W^\top (p - r_t),

    so :math:`\|\nabla_z\|^2 = (p - r_t)^\top (W\bar A)(W\bar A)^\top (p - r_t)`. Differentiable with
    respect to every parameter (no double back-propagation is needed).

    Args:
        z: Points, shape ``(n, d)``.
        weight: ``W``, shape ``(K_S, d)``.
        bias: ``c``, shape ``(K_S,)``.
        log_label_map: :math:`\log B`, shape ``(K_T, K_S)``.
        inverse: :math:`\bar A`; ``None`` for the identity. Pass ``None`` (and un-mapped points) to measure
            the gradient with respect to the classifier input instead of the feature (the authors' variant).
        shift: ``b``; ``None`` for zero.
        labels: Class ids ``(n,)``: the norm for that label only. ``None``: every label, shape ``(n, K_T)``.
        chunk_size: Points per chunk, to bound memory at ``chunk_size · K_T · K_S`` numbers.

    Returns:
        Shape ``(n,)`` if ``labels`` is given, else ``(n, K_T)``.
    """
    out = []
    for start in range(0, z.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        diff, gram = _softmax_jacobian_gram(z[sl], weight, bias, log_label_map, inverse, shift)
        if labels is not None:
            diff = diff[torch.arange(diff.shape[0], device=diff.device), labels[sl].long()]  # (c, K_S)
            sq = ((diff @ gram) * diff).sum(-1)
        else:
            sq = torch.einsum("nts,sk,ntk->nt", diff, gram, diff)
        out.append(sq.clamp_min(0).sqrt())
    return torch.cat(out)


def lipschitz_constant(
    points: list[Tensor] | Tensor,
    weight: Tensor,
    bias: Tensor,
    log_label_map: Tensor,
    inverse: Tensor | None = None,
    shift: Tensor | None = None,
) -> Tensor:
    r"""Empirical Lipschitz constant :math:`\hat\tau` of :math:`z \mapsto \ell(h'''(z), t)`.

    .. math:: \hat\tau = \max_{i,\,t} \|\nabla_z \ell(h'''(z_i), t)\|

    The maximum runs over the given points (the transformed reference points and the target points
    of a batch or split) and over every target label, since the transport pairs each point with any
    label. Differentiable: the gradient of a maximum is the gradient of its arg-max entry, so when
    autograd records, every norm is computed without a graph and only the arg-max ``(point, label)``
    is recomputed with one (a step's backward then costs one point's instead of ``n · K_T`` norms').

    Args:
        points: One ``(n, d)`` tensor or a list of them.
        weight: ``W``, shape ``(K_S, d)``.
        bias: ``c``, shape ``(K_S,)``.
        log_label_map: :math:`\log B`, shape ``(K_T, K_S)``.
        inverse: :math:`\bar A` or the exact :math:`A^{-1}`; ``None`` for the identity.
        shift: ``b``.

    Returns:
        Scalar.
    """
    if isinstance(points, Tensor):
        points = [points]
    points = [p for p in points if p.numel()]
    if not points:
        raise ValueError("lipschitz_constant: every point set is empty; pass at least one point")
    args = (weight, bias, log_label_map, inverse, shift)
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*points, *args))
    if not tracked:
        return torch.stack([gradient_norms(p, *args).max() for p in points]).max()
    with torch.no_grad():
        best = None
        for j, p in enumerate(points):
            norms = gradient_norms(p, *args)  # (n, K_T)
            flat = int(norms.argmax())
            value = float(norms.flatten()[flat])
            if best is None or value > best[0] or math.isnan(value):
                best = (value, j, flat // norms.shape[1], flat % norms.shape[1])
                if math.isnan(value):
                    break
    assert best is not None  # points is not empty
    _, j, row, label = best
    z = points[j][row : row + 1]
    return gradient_norms(z, *args, labels=torch.tensor([label], device=z.device)).squeeze(0)


def global_lipschitz_bound(weight: Tensor, inverse: Tensor | None = None) -> Tensor:
    r"""A certified, data-free upper bound on :math:`\hat\tau`.

    Since :math:`p` and :math:`r_t` both lie on the simplex, :math:`\|p - r_t\|_2 \le \sqrt 2`, hence

    .. math:: \|\nabla_z \ell\| \le \sqrt{2}\,\|W \bar A\|_2 .

    Args:
        weight: ``W``, shape ``(K_S, d)``.
        inverse: :math:`\bar A` or :math:`A^{-1}`; ``None`` for the identity.

    Returns:
        Scalar.
    """
    return math.sqrt(2.0) * torch.linalg.matrix_norm(_logit_map(weight, inverse), ord=2)


def prior_matching_penalty(target_prior: Tensor, label_map: Tensor, prior: Tensor) -> Tensor:
    r"""Squared mismatch between the target prior and the transformed label marginal.

    .. math:: \|p_T - B D\|_2^2
    """
    return ((target_prior - label_map @ prior) ** 2).sum()


def inverse_penalty(
    matrix: Tensor, inverse: Tensor, probes: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    r"""How far :math:`\bar A` is from :math:`A^{-1}`.

    .. math:: \|A\bar A - I\|_F^2 + \|\bar A A - I\|_F^2

    The exact value costs four :math:`d \times d` matrix products (with its gradient about
    :math:`12 d^3` flops: 25 GFLOP at :math:`d = 1280`). With ``probes = k > 0`` it is replaced by
    Hutchinson's unbiased estimate :math:`\frac{1}{k}\sum_j \|(A\bar A - I)v_j\|^2 +
    \|(\bar A A - I)v_j\|^2` over ``k`` standard Gaussian probes (:math:`\mathbb{E}[vv^\top] = I`),
    which costs :math:`O(d^2 k)`; its gradient is unbiased too.

    Args:
        matrix: ``A``, shape ``(d, d)``.
        inverse: :math:`\bar A`, shape ``(d, d)``.
        probes: Number of random probes; ``0`` computes the exact value.
        generator: Random generator of the probes.

    Returns:
        Scalar.
    """
    d = matrix.shape[0]
    if probes <= 0:
        eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device)
        return ((matrix @ inverse - eye) ** 2).sum() + ((inverse @ matrix - eye) ** 2).sum()
    v = torch.randn(d, probes, generator=generator, dtype=matrix.dtype).to(matrix.device)  # E[v v^T] = I
    left = matrix @ (inverse @ v) - v
    right = inverse @ (matrix @ v) - v
    return ((left**2).sum() + (right**2).sum()) / probes


#: Label-map entries at or below this are exact zeros of the logit-space bound (the floor of log B
#: leaves ~1e-38 there in float32; 0 and 1e-38 change a loss by less than float64 resolves).
LABEL_MAP_ZERO = 1e-30


def sparse_label_map(label_map: Tensor) -> Tensor:
    r""":math:`B` with entries at or below :data:`LABEL_MAP_ZERO` set to exactly 0, columns renormalised."""
    b = torch.where(label_map > LABEL_MAP_ZERO, label_map, torch.zeros_like(label_map))
    return b / b.sum(dim=0, keepdim=True)


def sparse_prior(prior: Tensor) -> Tensor:
    r""":math:`D` with entries at or below :data:`LABEL_MAP_ZERO` set to exactly 0, renormalised.

    A reference class with :math:`D_s = 0` (a label map chosen by the bound may leave classes unused,
    :func:`tta.transforms.label_map_candidates`) then takes no part in the logit transport.
    """
    d = torch.where(prior > LABEL_MAP_ZERO, prior, torch.zeros_like(prior))
    return d / d.sum()


def label_losses(logits: Tensor, label_map: Tensor) -> Tensor:
    r"""The loss of :math:`B\,\mathrm{softmax}(u)` for every target label, :math:`g_t(u)`.

    .. math:: g_t(u) = -\log \sum_s B_{ts}\,\mathrm{softmax}_s(u)

    Args:
        logits: Reference-classifier logits :math:`u`, shape ``(n, K_S)``.
        label_map: :math:`B`, shape ``(K_T, K_S)`` (exact zeros allowed).

    Returns:
        Shape ``(n, K_T)``.
    """
    log_b = safe_log_label_map(torch.log(label_map))
    return -torch.logsumexp(log_b.unsqueeze(0) + torch.log_softmax(logits, dim=-1).unsqueeze(1), dim=-1)


def log_odds_displacement(source_logits: Tensor, target_logits: Tensor, label_map_row: Tensor) -> Tensor:
    r"""How much moving logits from :math:`u` to :math:`u'` can raise the odds of missing label :math:`t`.

    With :math:`\delta = u' - u`, :math:`S_t = \{s: B_{ts} > 0\}` and :math:`\bar S_t = \{s: B_{ts} < 1\}`,

    .. math:: L_t(u, u') = \max_{s \in \bar S_t} \delta_s - \min_{s \in S_t} \delta_s .

    For a one-hot row (each reference class maps to one target class) this is the change of the log-odds
    against label :math:`t` when the other logits all move by the most they do; for a row without zeros
    or ones it is the range :math:`\max\delta - \min\delta` (the oscillation seminorm, for which
    :math:`g_t` is 1-Lipschitz). May be negative (a move towards label :math:`t`).

    Args:
        source_logits: :math:`u`, shape ``(n, K_S)``.
        target_logits: :math:`u'`, shape ``(m, K_S)``.
        label_map_row: :math:`B_{t\cdot}`, shape ``(K_S,)``, with exact zeros (:func:`sparse_label_map`).

    Returns:
        Shape ``(n, m)``.
    """
    row = label_map_row.detach()
    if not bool((row > 0).any()):
        raise ValueError(
            "log_odds_displacement: the label-map row is all zeros (no reference class maps there)"
        )
    delta = target_logits.unsqueeze(0) - source_logits.unsqueeze(1)  # (n, m, K_S)
    high = delta.masked_fill(~(row < 1)[None, None, :], -torch.inf).amax(dim=-1)
    low = delta.masked_fill(~(row > 0)[None, None, :], torch.inf).amin(dim=-1)
    return high - low


def odds_transport_cost(source_losses: Tensor, displacement: Tensor) -> Tensor:
    r"""An upper bound on the target-side loss :math:`g_t(u')` from the source-side loss and the move.

    .. math::
        g_t(u') \le \Phi\big(g_t(u), L_t(u, u')\big), \qquad \Phi(g, L) = \log\big(1 + (e^{g} - 1)\,e^{L}\big)

    Proof: :math:`e^{g_t} - 1 = N/Q` with :math:`N = \sum_s (1 - B_{ts}) e^{u_s}` and
    :math:`Q = \sum_s B_{ts} e^{u_s}`; moving to :math:`u'` multiplies :math:`N` by at most
    :math:`e^{\max_{\bar S_t}\delta}` and :math:`Q` by at least :math:`e^{\min_{S_t}\delta}`
    (:func:`log_odds_displacement`). :math:`\Phi(g, 0) = g`, and :math:`\Phi(g, L) \le g + |L|`:
    never looser than the 1-Lipschitz bound, and far tighter where the loss is small.

    Args:
        source_losses: :math:`g_t(u_i)`, shape ``(n,)``.
        displacement: :math:`L_t(u_i, u'_j)`, shape ``(n, m)``.

    Returns:
        The cost matrix :math:`C_{ij} = \Phi(g_t(u_i), L_t(u_i, u'_j))`, shape ``(n, m)``.
    """
    log_odds = torch.log(torch.expm1(source_losses.clamp_min(1e-300)))  # log(e^g - 1), finite for g > 0
    return torch.logaddexp(torch.zeros_like(displacement), log_odds.unsqueeze(1) + displacement)


def logit_transport(
    source_logits: Tensor,
    source_labels: Tensor,
    source_weights: Tensor,
    target_logits: Tensor,
    target_labels: Tensor,
    target_weights: Tensor,
    label_map: Tensor,
    transport: Any,
) -> tuple[Tensor, Tensor]:
    r"""The logit-space transport term, an upper bound on the target loss of the transformed classifier.

    The transformed reference distribution of label :math:`t` is :math:`\mu_t = \sum_i a_i B_{t s_i}
    \delta_{u_i}` (reference logits :math:`u_i = W z_i + c`, which the feature map leaves unchanged), the
    target one :math:`\nu_t = \sum_{j: t_j = t} b_j \delta_{u'_j}` (:math:`u' = W A^{-1}(z' - b) + c`);
    with :math:`BD = p_T` their masses agree. For any coupling :math:`\pi_t` of them,
    :math:`\int g_t\,d\nu_t \le \int \Phi(g_t(u), L_t(u, u'))\,d\pi_t` (:func:`odds_transport_cost`), so

    .. math::
        \mathbb{E}_T\, g \;\le\; \sum_t \min_{\pi_t \in \Pi(\mu_t, \nu_t)}
        \int \Phi\big(g_t(u), L_t(u, u')\big)\, d\pi_t .

    Args:
        source_logits: :math:`u_i`, shape ``(n, K_S)``.
        source_labels: :math:`s_i`, shape ``(n,)``.
        source_weights: :math:`a_i`, summing to :math:`D_s` over each reference class, shape ``(n,)``.
        target_logits: :math:`u'_j`, shape ``(m, K_S)``.
        target_labels: :math:`t_j`, shape ``(m,)``.
        target_weights: :math:`b_j`, summing to :math:`(BD)_t` over each target label, shape ``(m,)``.
        label_map: :math:`B` with exact zeros (:func:`sparse_label_map`), shape ``(K_T, K_S)``.
        transport: ``transport(cost, a, b) -> value``, an exact OT solver differentiable in the cost
            (:func:`tta.distances.transport_cost`).

    Returns:
        The transport value :math:`\sum_t \mathrm{OT}_t` (differentiable through the target logits) and
        the transformed-reference loss :math:`\sum_t \int g_t\,d\mu_t` (its value at zero displacement).
    """
    losses = label_losses(source_logits, label_map)  # (n, K_T)
    total = source_logits.new_zeros(())
    reference = source_logits.new_zeros(())
    for t in range(label_map.shape[0]):
        on_t = target_labels == t
        a = (source_weights * label_map[t][source_labels]).detach()
        keep = a > 0
        if not bool(on_t.any()) or not bool(keep.any()):
            continue
        b = target_weights[on_t].detach()
        a_t = a[keep] * (b.sum() / a[keep].sum())  # equal masses: BD = p_T up to float round-off
        move = log_odds_displacement(source_logits[keep], target_logits[on_t], label_map[t])
        total = total + transport(odds_transport_cost(losses[keep, t], move), a_t, b)
        reference = reference + (a_t * losses[keep, t]).sum()
    return total, reference


@dataclass
class BoundTerms:
    r"""The bound and its three terms (floats, nats).

    Attributes:
        weighted_source_loss: Term 1, :math:`\sum_s D_s \bar L_s`.
        conditional_entropy: Term 2, :math:`H(Y_T \mid Y_S)`.
        tau: Lipschitz constant :math:`\hat\tau`.
        w1: Wasserstein distance :math:`W_1(P_{S'''}, P_T)`.
        tau_w1: Term 3, :math:`\hat\tau W_1`.
        bound: The sum of the three terms.
    """

    weighted_source_loss: float
    conditional_entropy: float
    tau: float
    w1: float
    tau_w1: float
    bound: float

    def to_dict(self) -> dict[str, float]:
        """The terms as a plain dict."""
        return asdict(self)


def assemble_bound(weighted_loss: Tensor, entropy: Tensor, tau: Tensor, w1: Tensor) -> Tensor:
    r"""The bound, :math:`\sum_s D_s \bar L_s + H(Y_T|Y_S) + \hat\tau W_1` (differentiable)."""
    return weighted_loss + entropy + tau * w1


def bound_terms(weighted_loss: Tensor, entropy: Tensor, tau: Tensor, w1: Tensor) -> BoundTerms:
    """The bound and its terms as floats (for reporting)."""
    values = [float(v.detach()) for v in (weighted_loss, entropy, tau, w1)]
    tau_w1 = values[2] * values[3]
    return BoundTerms(values[0], values[1], values[2], values[3], tau_w1, values[0] + values[1] + tau_w1)
