r"""The transform of the reference task: prior :math:`D`, label map :math:`B`, feature map :math:`(A, b)`.

:class:`TaskTransform` holds the parameters and knows nothing of data loading or training loops:

- :math:`D = \mathrm{softmax}(\tilde d)`, initialised at :math:`\log p_S` so that :math:`D_0 = p_S`;
- :math:`B = \mathrm{softmax}_t(\tilde B + \beta 1^\top)`, column-stochastic; :math:`\beta` is a per-target-
  class bias fitted (not learned) so that the transformed label marginal matches the target prior,
  :math:`BD = p_T` (:meth:`TaskTransform.match_label_marginal`);
- :math:`A` (invertible) and :math:`\bar A \approx A^{-1}`, both initialised at :math:`I`, and :math:`b = 0`.

With ``feature_map="logit"`` (the ``logit`` bound variant, docs/method.md) the feature map is learned
through what the classifier sees of it: a change :math:`\Delta` of the logit map and :math:`\delta c` of
the logit bias, :math:`W\bar A = W + \Delta`; :math:`\bar A = I + W^+\Delta` (a rank-:math:`K_S`
update of the identity, so no :math:`d \times d` matrix is learned or inverted while fitting), and
:meth:`TaskTransform.materialise_logit_map` writes the exact :math:`A`, :math:`\bar A`, :math:`b` at the
end.

Ablation modes (DESIGN §1.4): ``learned_all`` (everything learned), ``learned_a`` (only the feature map
is learned; :math:`B` and :math:`D` stay at their initial values), ``fixed_all`` (nothing is learned).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from tta.bound import log_floor

__all__ = ["MODES", "TaskTransform", "condition_number", "label_map_candidates", "matching_label_map"]

Mode = Literal["learned_all", "learned_a", "fixed_all"]
FeatureMap = Literal["dense", "logit"]
MODES: tuple[str, ...] = ("learned_all", "learned_a", "fixed_all")


def condition_number(matrix: Tensor) -> float:
    r"""The 2-norm condition number :math:`\kappa(A) = \sigma_{\max}(A) / \sigma_{\min}(A)`, in float64.

    One SVD of the ``(d, d)`` matrix (singular values only; measured on one CPU thread: 0.09 s at ``d = 512``,
    1.3 s at ``d = 1280``).
    A singular matrix, or one with a NaN/Inf entry, has condition number ``inf``.

    Args:
        matrix: ``A``, shape ``(d, d)``.

    Returns:
        :math:`\kappa(A) \ge 1`, or ``inf``.
    """
    return _condition(_singular_values(matrix))


def _singular_values(matrix: Tensor) -> Tensor | None:
    """The singular values of ``matrix`` in float64, or ``None`` if it has a NaN/Inf entry."""
    a = matrix.detach().double()
    return torch.linalg.svdvals(a) if bool(torch.isfinite(a).all()) else None


def _condition(sv: Tensor | None) -> float:
    """Largest over smallest of singular values ``sv`` (``inf`` if singular, or ``sv`` is ``None``)."""
    if sv is None:
        return float("inf")
    smallest = float(sv.min())
    return float(sv.max()) / smallest if smallest > 0 else float("inf")


def matching_label_map(
    source_means: Tensor, target_means: Tensor, source_prior: Tensor, target_prior: Tensor
) -> Tensor:
    r"""A data-driven label map: optimal transport between reference and target class means.

    Solves the exact discrete OT problem between the reference classes (mass :math:`p_S`) and target
    classes (mass :math:`p_T`) with cost :math:`\|\mu_s - \nu_t\|_2`, and returns
    :math:`B_{ts} = \pi_{st} / p_S(s)`. :math:`B` is column-stochastic, mostly one-hot (an extreme point
    of the transport polytope has at most :math:`K_S + K_T - 1` non-zeros), and
    :math:`B p_S = p_T` holds exactly.

    Args:
        source_means: Class means of the reference features, shape ``(K_S, d)``.
        target_means: Class means of the target features, shape ``(K_T, d)``.
        source_prior: ``p_S``, shape ``(K_S,)``.
        target_prior: ``p_T``, shape ``(K_T,)``.

    Returns:
        ``B``, shape ``(K_T, K_S)``, float64.
    """
    import ot

    a = source_prior.detach().double().cpu()
    b = target_prior.detach().double().cpu()
    cost = torch.cdist(source_means.detach().double().cpu(), target_means.detach().double().cpu())
    plan = ot.emd(a / a.sum(), b / b.sum(), cost)  # (K_S, K_T)
    return (plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-300)).T.contiguous()


def _hard_label_map(assign: Tensor, fallback: Tensor, target_prior: Tensor) -> tuple[Tensor, Tensor]:
    r"""The :math:`(D, B)` that sends all of target class :math:`t` to reference class ``assign[t]``.

    :math:`D_s = \sum_{t: s(t) = s} p_T(t)` and :math:`B_{ts} = p_T(t) / D_s` for :math:`s(t) = s`, so
    :math:`BD = p_T`; a reference class no target class is sent to gets :math:`D_s = 0` and sends what
    the classifier gives it to target class ``fallback[s]``.
    """
    p_t = target_prior.double().cpu()
    prior = torch.zeros(fallback.numel(), dtype=torch.float64)
    prior.index_add_(0, assign, p_t)
    label_map = torch.zeros(p_t.numel(), fallback.numel(), dtype=torch.float64)
    label_map[torch.arange(p_t.numel()), assign] = p_t / prior[assign]
    unused = torch.nonzero(prior == 0).flatten()
    label_map[fallback[unused], unused] = 1.0
    return prior, label_map


def label_map_candidates(
    source_means: Tensor,
    target_means: Tensor,
    target_log_probs: Tensor,
    target_labels: Tensor,
    source_prior: Tensor,
    target_prior: Tensor,
) -> dict[str, tuple[Tensor, Tensor]]:
    r"""Candidate pairs :math:`(D, B)` with :math:`BD = p_T`, for choosing the label map by the bound.

    The bound holds for every :math:`(D, B)` with :math:`BD = p_T`, so the candidate with the lowest
    bound on the training data may be kept (``transform.label_map_init: bound``). With the reference
    classifier's cost :math:`C_{st} = -\frac{1}{n_t}\sum_{j: t_j = t}\log h_S(z_j)_s` (how badly
    :math:`h_S` calls target class :math:`t` reference class :math:`s`):

    - ``matching``: :math:`D = p_S`, :math:`B` from optimal transport between the class means
      (:func:`matching_label_map`);
    - ``logit_matching``: :math:`D = p_S`, :math:`B` from optimal transport for the cost :math:`C`;
    - ``assignment`` (only when :math:`K_T \le K_S`): each target class to its own reference class, the
      assignment of least total cost :math:`\sum_t p_T(t) C_{s(t)t}` (Hungarian algorithm), with
      :math:`D_{s(t)} = p_T(t)` and :math:`D = 0` on the unused classes: :math:`H(Y_T|Y_S) = 0`;
    - ``nearest``: each target class to its cheapest reference class, :math:`\arg\min_s C_{st}` (two
      target classes may share one: then :math:`H(Y_T|Y_S) > 0`).

    In the last two, a reference class left unused (:math:`D_s = 0`) maps to its cheapest target class,
    :math:`\arg\min_t C_{st}`, in the classifier :math:`B\,h_S` the bound certifies.

    Args:
        source_means: Class means of the reference features, shape ``(K_S, d)``.
        target_means: Class means of the target features, shape ``(K_T, d)``.
        target_log_probs: :math:`\log h_S(z_j)` on the target training points, shape ``(m, K_S)``.
        target_labels: Their labels, shape ``(m,)``; every target class present.
        source_prior: ``p_S``, shape ``(K_S,)``.
        target_prior: ``p_T``, shape ``(K_T,)``.

    Returns:
        ``{name: (D, B)}`` in float64 on the CPU, ``D`` of shape ``(K_S,)``, ``B`` of shape ``(K_T, K_S)``
        with exact zeros.
    """
    import ot
    from scipy.optimize import linear_sum_assignment

    k_s, k_t = source_means.shape[0], target_means.shape[0]
    p_s = source_prior.detach().double().cpu()
    p_t = target_prior.detach().double().cpu()
    p_s, p_t = p_s / p_s.sum(), p_t / p_t.sum()
    log_probs, labels = target_log_probs.detach().double().cpu(), target_labels.detach().cpu()
    cost = torch.stack([-log_probs[labels == t].mean(0) for t in range(k_t)], dim=1)  # (K_S, K_T)
    plan = ot.emd(p_s, p_t, cost)
    out = {
        "matching": (p_s, matching_label_map(source_means, target_means, p_s, p_t)),
        "logit_matching": (p_s, (plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-300)).T.contiguous()),
    }
    if k_t <= k_s:
        rows, cols = linear_sum_assignment((cost * p_t).T.numpy())  # rows: target classes, in order
        assign = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
        out["assignment"] = _hard_label_map(assign, cost.argmin(dim=1), p_t)
    out["nearest"] = _hard_label_map(cost.argmin(dim=0), cost.argmin(dim=1), p_t)
    return out


class TaskTransform(nn.Module):
    """Learnable transform of a reference task into the target task.

    Args:
        num_source_classes: ``K_S``.
        num_target_classes: ``K_T``.
        feature_dim: ``d``.
        mode: ``learned_all``, ``learned_a`` or ``fixed_all``.
    """

    #: Largest change of a label-map bias (nats) in one step of :meth:`match_label_marginal`.
    MAX_BIAS_STEP: float = 10.0
    label_bias: Tensor  # a buffer (fitted, not learned)

    def __init__(
        self,
        num_source_classes: int,
        num_target_classes: int,
        feature_dim: int,
        mode: Mode = "learned_all",
        feature_map: FeatureMap = "dense",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown transform mode {mode!r}; choose one of {', '.join(MODES)}")
        if feature_map not in ("dense", "logit"):
            raise ValueError(f"unknown feature_map {feature_map!r}; choose 'dense' or 'logit'")
        self.mode = mode
        self.feature_map = feature_map
        # (U, V) with Ā = I + U V, set by materialise_logit_map: cond(A) then needs a 2K_S x 2K_S SVD
        self._low_rank: tuple[Tensor, Tensor] | None = None
        self.num_source_classes = num_source_classes
        self.num_target_classes = num_target_classes
        self.feature_dim = feature_dim
        self.prior_logits = nn.Parameter(torch.zeros(num_source_classes))
        self.label_logits = nn.Parameter(torch.zeros(num_target_classes, num_source_classes))
        self.matrix = nn.Parameter(torch.eye(feature_dim))
        self.inverse = nn.Parameter(torch.eye(feature_dim))
        self.shift = nn.Parameter(torch.zeros(feature_dim))
        self.register_buffer("label_bias", torch.zeros(num_target_classes))
        learn_labels = mode == "learned_all" and feature_map == "dense"
        learn_features = mode in ("learned_all", "learned_a")
        self.prior_logits.requires_grad_(learn_labels)
        self.label_logits.requires_grad_(learn_labels)
        for p in (self.matrix, self.inverse, self.shift):
            p.requires_grad_(learn_features and feature_map == "dense")
        if feature_map == "logit":  # the logit map's change and the logit bias' change
            self.logit_delta = nn.Parameter(torch.zeros(num_source_classes, feature_dim))
            self.logit_bias_delta = nn.Parameter(torch.zeros(num_source_classes))
            self.logit_delta.requires_grad_(learn_features)
            self.logit_bias_delta.requires_grad_(learn_features)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_prior(self, source_prior: Tensor, as_logits: bool = True) -> None:
        r"""Initialise :math:`D`.

        Args:
            source_prior: ``p_S``, shape ``(K_S,)``. An exact zero becomes the logit
                :func:`~tta.bound.log_floor`, which :func:`tta.bound.sparse_prior` reads as an exact zero.
            as_logits: ``True`` (default): logits :math:`\log p_S`, so :math:`D_0 = p_S` exactly.
                ``False``: logits :math:`p_S` itself, the authors' code (then :math:`D_0 \ne p_S`).
        """
        p = source_prior.to(self.prior_logits)
        logits = p.clamp_min(1e-30).log().masked_fill(p == 0, log_floor(p.dtype)) if as_logits else p
        self.prior_logits.copy_(logits)

    @torch.no_grad()
    def init_label_map(
        self,
        label_map: Tensor | None = None,
        smoothing: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        """Initialise the label-map logits.

        Args:
            label_map: A column-stochastic ``(K_T, K_S)`` matrix; its smoothed log becomes the logits.
                ``None``: logits drawn uniformly from [0, 1), as the authors' code does.
            smoothing: Mixes ``label_map`` with the uniform map before the log, so that it stays learnable.
            generator: Random generator for the ``None`` case.
        """
        self.label_bias.zero_()
        if label_map is None:
            self.label_logits.copy_(torch.rand(self.label_logits.shape, generator=generator))
            return
        k_t = self.num_target_classes
        smoothed = (1.0 - smoothing) * label_map.to(torch.float64) + smoothing / k_t
        # floored: a hard map with smoothing = 0 keeps finite, learnable logits
        floor = log_floor(self.label_logits.dtype)
        self.label_logits.copy_(smoothed.log().clamp_min(floor).to(self.label_logits))

    # ------------------------------------------------------------------ derived quantities
    @property
    def prior(self) -> Tensor:
        """Class prior :math:`D`, shape ``(K_S,)``."""
        return torch.softmax(self.prior_logits, dim=0)

    @property
    def log_label_map(self) -> Tensor:
        r""":math:`\log B`, shape ``(K_T, K_S)``; finite everywhere."""
        return torch.log_softmax(self.label_logits + self.label_bias.unsqueeze(1), dim=0)

    @property
    def label_map(self) -> Tensor:
        """Column-stochastic label map :math:`B`, shape ``(K_T, K_S)``."""
        return self.log_label_map.exp()

    def map_features(self, z: Tensor) -> Tensor:
        r"""Apply the feature map :math:`z \mapsto A z + b` to rows of ``z`` ``(n, d)``."""
        return z @ self.matrix.T + self.shift

    def logit_map(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        r"""The map from features to the reference classifier's logits, :math:`(W\bar A, c - W\bar A b)`.

        For ``feature_map="logit"``: :math:`(W + \Delta, c + \delta c)`, differentiable in
        :math:`\Delta, \delta c`; otherwise from :math:`\bar A` and :math:`b`.

        Args:
            weight: :math:`W`, shape ``(K_S, d)``.
            bias: :math:`c`, shape ``(K_S,)``.
        """
        if self.feature_map == "logit":
            return weight + self.logit_delta, bias + self.logit_bias_delta
        m = weight @ self.inverse
        return m, bias - m @ self.shift

    @torch.no_grad()
    def materialise_logit_map(self, weight: Tensor, bias: Tensor) -> None:
        r"""Write the feature map the learned logit map stands for into :math:`A`, :math:`\bar A`, :math:`b`.

        :math:`\bar A = I + W^+\Delta` (so :math:`W\bar A = W + \Delta` for :math:`W` of full row rank),
        :math:`A = \bar A^{-1}`, and :math:`b = -(W + \Delta)^+ \delta c` (so :math:`c - W\bar A b =
        c + \delta c`), in float64. Afterwards :func:`tta.bound.transformed_log_probs` with
        :math:`\bar A` and :math:`b` is the classifier the bound certifies.

        Raises:
            ValueError: If ``feature_map`` is not ``"logit"``, or :math:`W` is not of full row rank.
        """
        if self.feature_map != "logit":
            raise ValueError("materialise_logit_map is for feature_map='logit'")
        w = weight.detach().double()
        if int(torch.linalg.matrix_rank(w)) < w.shape[0]:
            raise ValueError(
                "the reference classifier's weight W is not of full row rank, so W + Δ is not W Ā for an "
                "invertible A; train h_S on features of dimension ≥ K_S"
            )
        delta = self.logit_delta.detach().double()
        eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        inverse = eye + torch.linalg.pinv(w) @ delta
        m = w + delta
        shift = -torch.linalg.pinv(m) @ self.logit_bias_delta.detach().double()
        self.inverse.copy_(inverse.to(self.inverse))
        self.matrix.copy_(torch.linalg.solve(inverse, eye).to(self.matrix))
        self.shift.copy_(shift.to(self.shift))
        self._low_rank = (torch.linalg.pinv(w), delta)

    def exact_inverse(self) -> Tensor:
        """:math:`A^{-1}` computed by an LU solve in float64 (for evaluation)."""
        a = self.matrix.detach().double()
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        return torch.linalg.solve(a, eye).to(self.matrix.dtype)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        r"""cond(A), :math:`\|A\bar A - I\|_F` and the smallest singular value of ``A``."""
        a = self.matrix.detach().double()
        sv = self._low_rank_singular_values()
        if sv is None:
            sv = _singular_values(a)  # one SVD for both cond(A) and σ_min
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        return {
            "cond_A": _condition(sv),
            "min_singular_value_A": math.nan if sv is None else float(sv.min()),
            "inverse_error": float(torch.linalg.matrix_norm(a @ self.inverse.detach().double() - eye)),
        }

    def _low_rank_singular_values(self) -> Tensor | None:
        r"""The singular values of :math:`A` from :math:`\bar A = I + UV` (rank :math:`r \le 2K_S`).

        With :math:`Q` an orthonormal basis of the columns of :math:`[U, V^\top]`, :math:`\bar A` maps
        :math:`Q` into itself and is the identity on its orthogonal complement (there :math:`Vx = 0`), so
        its singular values are those of :math:`Q^\top \bar A Q` and ones; :math:`A = \bar A^{-1}` has
        their reciprocals. ``None`` when no factors are known or :math:`\bar A` no longer equals them.
        """
        if self._low_rank is None:
            return None
        u, v = self._low_rank
        inverse = self.inverse.detach().double()
        if u.device != inverse.device:
            return None
        eye = torch.eye(inverse.shape[0], dtype=inverse.dtype, device=inverse.device)
        if not torch.allclose(inverse, (eye + u @ v).to(self.inverse).double(), rtol=0.0, atol=1e-6):
            return None  # Ā was changed after materialise_logit_map
        q, _ = torch.linalg.qr(torch.cat([u, v.T], dim=1))
        # Qᵀ Ā Q = I + (Qᵀ U)(V Q): r x r, without another d x d product
        block = torch.eye(q.shape[1], dtype=q.dtype, device=q.device) + (q.T @ u) @ (v @ q)
        block_sv = torch.linalg.svdvals(block)
        if q.shape[1] < inverse.shape[0]:
            block_sv = torch.cat([block_sv, block_sv.new_ones(1)])
        if not bool(torch.isfinite(block_sv).all()) or float(block_sv.min()) <= 0:
            return None
        return 1.0 / block_sv

    # ------------------------------------------------------------------ label-marginal matching
    @torch.no_grad()
    def match_label_marginal(
        self,
        target_prior: Tensor,
        adjust: Literal["label_map", "prior"] = "label_map",
        max_iter: int = 100,
        tol: float = 1e-10,
    ) -> float:
        r"""Make the transformed label marginal equal the target prior, :math:`BD = p_T`.

        With the label-aware ground cost (large :math:`\lambda`), any mismatch between :math:`BD` and
        :math:`p_T` must be transported across labels and dominates :math:`W_1`. The bound holds for
        every :math:`(D, B)`, so we may pick the closest pair that satisfies the constraint:

        - ``adjust="label_map"`` keeps :math:`D` and fits the per-target-class bias :math:`\beta` of the
          logits of :math:`B`. The constraint is the stationarity condition of the convex function
          :math:`f(\beta) = \sum_s D_s \log\sum_t e^{\tilde B_{ts} + \beta_t} - p_T^\top\beta`
          (the dual of the KL projection of the joint :math:`B\,\mathrm{diag}(D)` onto the marginals
          :math:`(p_T, D)`, i.e. Sinkhorn's matrix scaling), which is minimised by damped Newton steps:
          quadratic convergence where plain scaling crawls once the columns of :math:`B` are nearly
          one-hot. A solution exists because :math:`B > 0`.
        - ``adjust="prior"`` keeps :math:`B` and updates :math:`D \leftarrow D \odot B^\top (p_T / BD)`
          (EM for a mixture weight), converging to :math:`\arg\min_D \mathrm{KL}(p_T \| BD)`; exact when
          :math:`p_T` lies in the cone of :math:`B`'s columns.

        Args:
            target_prior: ``p_T``, shape ``(K_T,)``, every entry positive.
            adjust: Which of :math:`B` or :math:`D` to adjust.
            max_iter: Iteration cap.
            tol: Stop when :math:`\|BD - p_T\|_1 \le` ``tol``.

        Returns:
            The remaining mismatch :math:`\|BD - p_T\|_1`.
        """
        p_t = target_prior.detach().double().to(self.label_logits.device)
        if bool((p_t <= 0).any()):
            raise ValueError(
                "the target prior has an empty class; every target class needs at least one sample"
            )
        p_t = p_t / p_t.sum()
        logits = self.label_logits.detach().double()
        bias = self.label_bias.double().clone()
        prior = self.prior.detach().double()
        prior = prior / prior.sum()
        residual = float("inf")
        if adjust not in ("label_map", "prior"):
            raise ValueError(f"adjust must be 'label_map' or 'prior', not {adjust!r}")
        ones = torch.ones(p_t.numel(), p_t.numel(), dtype=p_t.dtype, device=p_t.device)

        def dual(beta: Tensor) -> Tensor:
            return (prior * torch.logsumexp(logits + beta.unsqueeze(1), dim=0)).sum() - p_t @ beta

        for _ in range(max_iter):
            b = torch.softmax(logits + bias.unsqueeze(1), dim=0)
            q = b @ prior
            residual = float((q - p_t).abs().sum())
            if residual <= tol:
                break
            if adjust == "prior":
                prior = prior * (b.T @ (p_t / q.clamp_min(1e-300)))
                prior = prior / prior.sum()
                continue
            # Newton step on the dual; its Hessian diag(q) - (B diag(D)) B^T is singular along 1 only
            hessian = torch.diag(q) - (b * prior) @ b.T + ones / p_t.numel()
            try:
                step = torch.linalg.solve(hessian, q - p_t)
            except torch.linalg.LinAlgError:  # a class of q below 1e-17 makes it singular in float64
                step = None
            if step is None or not bool(torch.isfinite(step).all()) or float((q - p_t) @ step) <= 0:
                # Newton failed (q nearly one-hot: the Hessian is singular to working precision): Sinkhorn's
                # scaling step beta_t += log(p_t / q_t), a descent direction: (q - p)·(log q - log p) >= 0
                step = q.clamp_min(1e-300).log() - p_t.log()
            # a nearly flat direction gives a huge step that a plain decrease test accepts with a tiny alpha,
            # overshooting back and forth: cap it at MAX_BIAS_STEP nats, and ask for a sufficient decrease
            step = step * min(1.0, self.MAX_BIAS_STEP / float(step.abs().max().clamp_min(1e-300)))
            slope = float((q - p_t) @ step)
            current, alpha = dual(bias), 1.0
            while alpha > 1e-8 and not bool(dual(bias - alpha * step) <= current - 1e-4 * alpha * slope):
                alpha *= 0.5
            bias = bias - alpha * step
        self.label_bias.copy_((bias - bias.mean()).to(self.label_bias))
        if adjust == "prior":
            self.prior_logits.copy_(prior.clamp_min(1e-300).log().to(self.prior_logits))
        return residual

    def extra_repr(self) -> str:
        """Sizes and mode, for ``repr``."""
        k_s, k_t = self.num_source_classes, self.num_target_classes
        extra = "" if self.feature_map == "dense" else f", feature_map={self.feature_map!r}"
        return f"K_S={k_s}, K_T={k_t}, d={self.feature_dim}, mode={self.mode!r}{extra}"
