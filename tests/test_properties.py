"""Property tests (hypothesis) of the maths: random shapes, priors, label maps and affine maps.

Each property lifts an inequality or identity of the example-based tests (test_bound.py,
test_transforms_heads.py, test_distances.py) to random instances: n ≤ 40 points, d ≤ 8, K ≤ 6 classes,
priors with near-zero entries, label maps from uniform to exactly one-hot, affine maps with cond(A) ≤ 100.
``derandomize=True`` makes the examples the same on every run (deterministic CI).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tta import bound as B
from tta.distances import AutoDistance, ExactDistance, SinkhornDistance
from tta.fitting import TransformConfig, finish_transform
from tta.transforms import TaskTransform, condition_number

SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
FEW = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
F64 = torch.float64

seeds = st.integers(0, 2**31 - 1)
n_classes = st.integers(1, 6)
dims = st.integers(1, 8)
label_map_kinds = st.sampled_from(["soft", "peaked", "hard", "near_hard", "uniform"])
prior_kinds = st.sampled_from(["dirichlet", "near_zero", "uniform"])


def _prior(kind: str, k: int, g: torch.Generator) -> torch.Tensor:
    """A point of the simplex: Dirichlet(1), one with entries of 1e-12, or uniform."""
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=F64)
    p = -torch.log(torch.rand(k, generator=g, dtype=F64))  # Exp(1) draws: Dirichlet(1) after normalising
    if kind == "near_zero" and k > 1:
        p[torch.randperm(k, generator=g)[: k // 2]] = 1e-12
    return p / p.sum()


def _log_label_map(kind: str, k_t: int, k_s: int, g: torch.Generator) -> torch.Tensor:
    """log B of a column-stochastic (K_T, K_S) map; ``hard`` has exact zeros (log = -inf)."""
    if kind == "uniform":
        return torch.full((k_t, k_s), -math.log(k_t), dtype=F64)
    if kind in ("hard", "near_hard"):
        one_hot = F.one_hot(torch.randint(0, k_t, (k_s,), generator=g), k_t).T.to(F64)
        if kind == "hard":
            return one_hot.log()
        return torch.log_softmax(one_hot * 40.0, dim=0)  # off-diagonal mass ~ e^-40
    scale = 1.0 if kind == "soft" else 15.0
    return torch.log_softmax(torch.randn(k_t, k_s, generator=g, dtype=F64) * scale, dim=0)


def _instance(seed: int, n: int, d: int, k_s: int, k_t: int, b_kind: str, p_kind: str):
    g = torch.Generator().manual_seed(seed)
    n = max(n, k_s)
    z = torch.randn(n, d, generator=g, dtype=F64) * 2
    w = torch.randn(k_s, d, generator=g, dtype=F64)
    c = torch.randn(k_s, generator=g, dtype=F64)
    labels = torch.cat([torch.arange(k_s), torch.randint(0, k_s, (n - k_s,), generator=g)])  # every class
    return z, w, c, labels, _log_label_map(b_kind, k_t, k_s, g), _prior(p_kind, k_s, g)


def _affine(seed: int, d: int, max_cond: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U diag(s) V^T with singular values in [1, max_cond^(1/2)] · random scale, and a shift b."""
    g = torch.Generator().manual_seed(seed + 1)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    s = torch.exp(torch.rand(d, generator=g, dtype=F64) * math.log(max_cond) / 2)
    return (u * s) @ v.T, torch.randn(d, generator=g, dtype=F64)


instances = st.tuples(seeds, st.integers(1, 40), dims, n_classes, n_classes, label_map_kinds, prior_kinds)


# ---------------------------------------------------------------------------- the terms of the bound


@SETTINGS
@given(instances)
def test_every_term_is_finite_and_the_label_lemma_holds(args):
    z, w, c, labels, log_b, prior = _instance(*args)
    k_s, k_t = w.shape[0], log_b.shape[0]
    label_map = log_b.exp()
    log_q = B.transformed_log_probs(z, w, c, log_b)
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(z.shape[0], dtype=F64), rtol=0, atol=1e-9)
    source_losses = F.cross_entropy(z @ w.T + c, labels, reduction="none")
    term1 = B.weighted_source_loss(prior, B.class_mean_losses(source_losses, labels, k_s))
    entropy = B.conditional_entropy(label_map, prior)
    lhs = B.transformed_source_loss(log_q, labels, prior, label_map)
    tau = B.lipschitz_constant(z, w, c, log_b)
    tau_global = B.global_lipschitz_bound(w)
    for value in (term1, entropy, lhs, tau, tau_global):
        assert torch.isfinite(value)
    # H(Y_T|Y_S) ∈ [0, log K_T]
    assert -1e-12 <= float(entropy) <= math.log(k_t) + 1e-12
    # the label lemma: E_{S'''}[ℓ] ≤ Σ D_s L̄_s + H(Y_T|Y_S), per sample too
    assert float(lhs) <= float(term1 + entropy) + 1e-9
    per_sample = -(label_map.T[labels] * log_q).sum(-1)
    col_h = -torch.special.xlogy(label_map, label_map).sum(0)
    assert torch.all(per_sample <= source_losses + col_h[labels] + 1e-9)
    # τ̂ ≤ √2‖W‖₂, and the bound is the sum of its terms
    assert float(tau) <= float(tau_global) * (1 + 1e-9) + 1e-12
    w1 = torch.tensor(0.7, dtype=F64)
    assert float(B.assemble_bound(term1, entropy, tau, w1)) == float(term1 + entropy + tau * w1)


@SETTINGS
@given(seeds, st.integers(1, 40), n_classes, prior_kinds)
def test_importance_weighting_identity(seed, n, k, p_kind):
    g = torch.Generator().manual_seed(seed)
    n = max(n, k)
    labels = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    losses = torch.rand(n, generator=g, dtype=F64) * 5
    prior = _prior(p_kind, k, g)
    lhs = B.importance_weighted_loss(losses, labels, prior)
    rhs = B.weighted_source_loss(prior, B.class_mean_losses(losses, labels, k))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12, abs=1e-15)


@SETTINGS
@given(instances, seeds)
def test_loss_and_gradient_norms_invariant_under_invertible_affine_maps(args, affine_seed):
    z, w, c, _, log_b, _ = _instance(*args)
    d = z.shape[1]
    a, b = _affine(affine_seed, d)
    a_inv = torch.linalg.inv(a)
    mapped = z @ a.T + b
    before = B.transformed_log_probs(z, w, c, log_b)
    after = B.transformed_log_probs(mapped, w, c, log_b, inverse=a_inv, shift=b)
    torch.testing.assert_close(after, before, rtol=1e-8, atol=1e-8)
    # the gradient w.r.t. the mapped feature is A^-T times the original one: its norm changes by ≤ ‖A^-1‖₂
    g_before = B.gradient_norms(z, w, c, log_b)
    g_after = B.gradient_norms(mapped, w, c, log_b, a_inv, b)
    inv_norm = float(torch.linalg.matrix_norm(a_inv, ord=2))
    assert torch.all(g_after <= g_before * inv_norm * (1 + 1e-9) + 1e-12)
    assert torch.isfinite(g_after).all()


# ---------------------------------------------------------------------------- the transform's constraints


@SETTINGS
@given(seeds, n_classes, n_classes, dims, st.floats(0.0, 60.0), prior_kinds)
def test_transform_constraints(seed, k_s, k_t, d, scale, p_kind):
    g = torch.Generator().manual_seed(seed)
    t = TaskTransform(k_s, k_t, d)
    t.init_prior(_prior(p_kind, k_s, g).float())
    with torch.no_grad():
        t.label_logits.copy_(torch.randn(k_t, k_s, generator=g) * scale)
    prior, label_map = t.prior.detach().double(), t.label_map.detach().double()
    assert torch.isfinite(prior).all() and torch.isfinite(label_map).all()
    assert torch.all(prior >= 0) and float(prior.sum()) == pytest.approx(1.0, abs=1e-6)  # D on the simplex
    torch.testing.assert_close(label_map.sum(0), torch.ones(k_s, dtype=F64), rtol=0, atol=1e-6)  # B^T rows
    assert torch.all(label_map >= 0)
    entropy = float(B.conditional_entropy(label_map, prior))
    assert -1e-6 <= entropy <= math.log(k_t) + 1e-5
    # BD = p_T after matching (for a target prior bounded away from 0)
    p_t = _prior("dirichlet", k_t, g) * 0.9 + 0.1 / k_t
    residual = t.match_label_marginal(p_t, max_iter=200)
    assert residual <= 1e-5, residual
    torch.testing.assert_close(
        t.label_map.detach().double() @ t.prior.detach().double(), p_t, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        t.label_map.detach().double().sum(0), torch.ones(k_s, dtype=F64), rtol=0, atol=1e-6
    )


@SETTINGS
@given(seeds, dims, st.floats(1.0, 1e4))
def test_finish_sets_the_inverse_and_cond_is_consistent(seed, d, max_cond):
    a, _ = _affine(seed, d, max_cond)
    t = TaskTransform(2, 2, d)
    with torch.no_grad():
        t.matrix.copy_(a)
    finish_transform(t, torch.tensor([0.5, 0.5]), TransformConfig())
    a32, inv = t.matrix.detach().double(), t.inverse.detach().double()
    kappa = condition_number(t.matrix)
    assert 1.0 - 1e-6 <= kappa <= max_cond * (1 + 1e-4)
    eye = torch.eye(d, dtype=F64)
    # float32 storage: ‖ĀA − I‖ is of order cond(A)·eps₃₂
    tol = 10 * kappa * torch.finfo(torch.float32).eps * math.sqrt(d)
    assert float(torch.linalg.matrix_norm(inv @ a32 - eye)) <= tol
    assert float(torch.linalg.matrix_norm(a32 @ inv - eye)) <= tol
    assert t.diagnostics()["cond_A"] == pytest.approx(kappa, rel=1e-12)


# ---------------------------------------------------------------------------- W₁


clouds = st.tuples(seeds, st.integers(1, 40), st.integers(1, 40), dims, st.floats(0.01, 5.0))


def _clouds(seed, n, m, d, spread):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * spread
    y = torch.randn(m, d, generator=g, dtype=F64) * spread + torch.randn(d, generator=g, dtype=F64)
    a = torch.rand(n, generator=g, dtype=F64) ** 3 + 1e-9
    b = torch.rand(m, generator=g, dtype=F64) + 1e-3
    return x, y, a / a.sum(), b / b.sum()


@SETTINGS
@given(clouds)
def test_w1_is_a_symmetric_nonnegative_metric(args):
    x, y, a, b = _clouds(*args)
    exact = ExactDistance()
    w_xy, w_yx = float(exact(x, y, a, b)), float(exact(y, x, b, a))
    assert w_xy >= 0 and math.isfinite(w_xy)
    assert w_xy == pytest.approx(w_yx, rel=1e-9, abs=1e-12)  # the same problem, transposed
    # cdist's matrix-product formula (n > 25) is accurate to about sqrt(eps)·‖x‖ (pairwise_distances)
    cdist_tol = 1e-7 * (1.0 + float(torch.cat([x, y]).norm(dim=1).max()))
    assert 0.0 <= float(exact(x, x, a, a)) <= cdist_tol
    # triangle inequality through the uniform measure on z
    z = (x[:1] + y[:1]) / 2 + torch.randn(
        5, x.shape[1], generator=torch.Generator().manual_seed(args[0]), dtype=F64
    )
    assert w_xy <= float(exact(x, z, a)) + float(exact(z, y, None, b)) + 2 * cdist_tol
    # a translation moves every unit of mass by ‖v‖
    v = torch.ones(x.shape[1], dtype=F64)
    assert float(exact(x, x + v, a, a)) == pytest.approx(float(v.norm()), abs=cdist_tol)


@FEW
@given(clouds)
def test_sinkhorn_and_auto_against_exact(args):
    x, y, a, b = _clouds(*args)
    w = float(ExactDistance()(x, y, a, b))
    sinkhorn = SinkhornDistance()
    s = float(sinkhorn(x, y, a, b))
    eps = sinkhorn.diagnostics["blur"]  # GeomLoss p=1: ε = blur
    # OT_ε(α,β) ≤ W₁ + ε·KL(π*|α⊗β) ≤ W₁ + ε log min(n, m), and OT_ε(α,α), OT_ε(β,β) ≥ 0
    assert s <= w + eps * math.log(min(x.shape[0], y.shape[0]) + 1) + 1e-6 * w + 1e-9
    # and from below, within a few ε (measured: at most 7.7 ε over 400 random draws, never above W₁)
    assert s >= w - 10 * eps
    auto = AutoDistance()
    assert float(auto(x, y, a, b)) == pytest.approx(w, rel=1e-12, abs=1e-15)  # small n: solved exactly
    assert auto.diagnostics["solver"] == "exact"


@FEW
@given(seeds, st.integers(2, 40), dims, n_classes, label_map_kinds)
def test_labelled_w1_adds_lambda_times_the_mass_that_changes_label(seed, n, d, k, b_kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64)
    ly = F.one_hot(torch.randint(0, k, (n,), generator=g), k).to(F64)
    lx = _log_label_map(b_kind, k, n, g).exp().T.contiguous()  # soft source labels, rows on the simplex
    lam = 1e6
    value = float(ExactDistance()(x, y, None, None, lx, ly, lam))
    delta = 0.5 * float((lx.mean(0) - ly.mean(0)).abs().sum())
    feature_part = value - lam * math.sqrt(2) * delta
    diameter = float(torch.cdist(x, y).max())
    assert math.isfinite(value)
    assert -1e-9 * value - 1e-6 <= feature_part <= diameter + 1e-9 * value + 1e-6
