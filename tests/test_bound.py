"""The terms of the bound against closed forms, identities and invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from tta import bound as B


def _random_instance(seed: int, n: int = 64, d: int = 6, k_s: int = 5, k_t: int = 4, hard: bool = False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(k_s, d, generator=g, dtype=torch.float64)
    c = torch.randn(k_s, generator=g, dtype=torch.float64)
    logits = torch.randn(k_t, k_s, generator=g, dtype=torch.float64) * 3
    if hard:
        logits = F.one_hot(torch.randint(0, k_t, (k_s,), generator=g), k_t).T.double() * 50
    log_b = torch.log_softmax(logits, dim=0)
    prior = torch.softmax(torch.randn(k_s, generator=g, dtype=torch.float64), 0)
    labels = torch.arange(n) % k_s
    return z, w, c, log_b, prior, labels


@pytest.mark.parametrize("seed", range(20))
def test_label_lemma(seed):
    """E over t ~ B[:, s] of CE(B h(z), t) <= CE(h(z), s) + H(B[:, s]), averaged with D: term1 + H."""
    z, w, c, log_b, prior, labels = _random_instance(seed)
    k_s = w.shape[0]
    log_q = B.transformed_log_probs(z, w, c, log_b)
    label_map = log_b.exp()
    lhs = B.transformed_source_loss(log_q, labels, prior, label_map)
    source_losses = F.cross_entropy(z @ w.T + c, labels, reduction="none")
    term1 = B.weighted_source_loss(prior, B.class_mean_losses(source_losses, labels, k_s))
    entropy = B.conditional_entropy(label_map, prior)
    assert lhs <= term1 + entropy + 1e-12
    # the per-sample version holds too
    per_sample = -(label_map.T[labels] * log_q).sum(-1)
    col_h = -torch.special.xlogy(label_map, label_map).sum(0)
    assert torch.all(per_sample <= source_losses + col_h[labels] + 1e-12)


def test_label_lemma_is_tight_for_one_hot_maps():
    z, w, c, log_b, prior, labels = _random_instance(3, k_s=4, k_t=4, hard=True)
    perm = torch.tensor([2, 0, 3, 1])
    log_b = torch.log(F.one_hot(perm, 4).T.double().clamp_min(1e-300))
    label_map = log_b.exp()
    log_q = B.transformed_log_probs(z, w, c, log_b)
    lhs = B.transformed_source_loss(log_q, labels, prior, label_map)
    source_losses = F.cross_entropy(z @ w.T + c, labels, reduction="none")
    term1 = B.weighted_source_loss(prior, B.class_mean_losses(source_losses, labels, 4))
    assert B.conditional_entropy(label_map, prior) == pytest.approx(0.0, abs=1e-12)
    assert float(lhs) == pytest.approx(float(term1), rel=1e-9)


def test_importance_weighting_identity():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (500,), generator=g)
    losses = torch.rand(500, generator=g, dtype=torch.float64)
    prior = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    lhs = B.importance_weighted_loss(losses, labels, prior)
    rhs = B.weighted_source_loss(prior, B.class_mean_losses(losses, labels, 7))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_class_mean_losses_rejects_empty_class():
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        B.class_mean_losses(torch.ones(4), torch.tensor([0, 1, 0, 1]), 3)


def test_conditional_entropy_closed_forms():
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    uniform = torch.full((4, 3), 0.25, dtype=torch.float64)
    assert float(B.conditional_entropy(uniform, prior)) == pytest.approx(math.log(4), rel=1e-12)
    one_hot = F.one_hot(torch.tensor([1, 0, 3]), 4).T.double()
    assert float(B.conditional_entropy(one_hot, prior)) == 0.0
    mixed = one_hot.clone()
    mixed[:, 2] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert float(B.conditional_entropy(mixed, prior)) == pytest.approx(0.5 * math.log(2), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_loss_invariant_under_invertible_affine_map(seed):
    z, w, c, log_b, _, _ = _random_instance(seed, d=8)
    g = torch.Generator().manual_seed(100 + seed)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64) + 3 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    a_inv = torch.linalg.inv(a)
    mapped = z @ a.T + b
    before = B.transformed_log_probs(z, w, c, log_b)
    after = B.transformed_log_probs(mapped, w, c, log_b, inverse=a_inv, shift=b)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_gradient_norms_match_autograd(seed):
    z, w, c, log_b, _, _ = _random_instance(seed, n=16, d=5, k_s=4, k_t=3)
    g = torch.Generator().manual_seed(seed)
    a_inv = torch.randn(5, 5, generator=g, dtype=torch.float64)
    shift = torch.randn(5, generator=g, dtype=torch.float64)
    closed = B.gradient_norms(z, w, c, log_b, a_inv, shift)  # (n, K_T)
    for t in range(3):
        zz = z.clone().requires_grad_(True)
        loss = -B.transformed_log_probs(zz, w, c, log_b, a_inv, shift)[:, t].sum()
        (grad,) = torch.autograd.grad(loss, zz)
        torch.testing.assert_close(closed[:, t], grad.norm(dim=1), rtol=1e-9, atol=1e-12)
    labels = torch.arange(16) % 3
    torch.testing.assert_close(
        B.gradient_norms(z, w, c, log_b, a_inv, shift, labels=labels), closed[torch.arange(16), labels]
    )


def test_gradient_norms_chunking_is_exact():
    z, w, c, log_b, _, _ = _random_instance(1, n=50)
    torch.testing.assert_close(
        B.gradient_norms(z, w, c, log_b, chunk_size=7), B.gradient_norms(z, w, c, log_b)
    )


def test_global_lipschitz_bound_dominates_empirical():
    for seed in range(10):
        z, w, c, log_b, _, _ = _random_instance(seed, n=200)
        z = z * 5
        emp = B.lipschitz_constant(z, w, c, log_b)
        assert emp <= B.global_lipschitz_bound(w) + 1e-12


def test_lipschitz_constant_is_differentiable():
    z, w, c, log_b, _, _ = _random_instance(0)
    a_inv = torch.eye(z.shape[1], dtype=torch.float64, requires_grad=True)
    tau = B.lipschitz_constant([z, z + 1], w, c, log_b, a_inv)
    tau.backward()
    assert a_inv.grad is not None and torch.isfinite(a_inv.grad).all() and a_inv.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", range(5))
def test_lipschitz_constant_gradient_equals_the_dense_maximum(seed):
    """The arg-max recomputation gives the value and every gradient of the dense max over all norms."""
    z, w, c, log_b, _, _ = _random_instance(seed, n=40, d=6, k_s=5, k_t=4)
    g = torch.Generator().manual_seed(100 + seed)
    inputs = {
        "z1": z,
        "z2": torch.randn(30, 6, generator=g, dtype=torch.float64) * 2,
        "w": w,
        "c": c,
        "log_b": log_b,
        "a_inv": torch.eye(6, dtype=torch.float64)
        + 0.1 * torch.randn(6, 6, generator=g, dtype=torch.float64),
        "shift": torch.randn(6, generator=g, dtype=torch.float64),
    }
    grads = []
    for dense in (True, False):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        args = (leaves["w"], leaves["c"], leaves["log_b"], leaves["a_inv"], leaves["shift"])
        if dense:  # the maximum of every norm, differentiated by autograd through all of them
            points = [leaves["z1"], leaves["z2"]]
            tau = torch.stack([B.gradient_norms(p, *args).max() for p in points]).max()
        else:
            tau = B.lipschitz_constant([leaves["z1"], leaves["z2"]], *args)
        tau.backward()
        grads.append(
            (float(tau), {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in leaves.items()})
        )
    (dense_value, dense_grads), (value, fast_grads) = grads
    assert value == pytest.approx(dense_value, rel=1e-12)
    for k in inputs:
        torch.testing.assert_close(fast_grads[k], dense_grads[k], rtol=1e-10, atol=1e-12, msg=k)
    assert (
        dense_grads["a_inv"].abs().sum() > 0
        and fast_grads["z1"].abs().sum() + fast_grads["z2"].abs().sum() > 0
    )
    with torch.no_grad():  # without a graph: the plain maximum, the same value
        assert float(B.lipschitz_constant([inputs["z1"], inputs["z2"]], *args)) == pytest.approx(
            value, rel=1e-12
        )


def test_lipschitz_constant_refuses_empty_point_sets():
    _, w, c, log_b, _, _ = _random_instance(0)
    with pytest.raises(ValueError, match="every point set is empty"):
        B.lipschitz_constant([torch.zeros(0, w.shape[1], dtype=w.dtype)], w, c, log_b)


def test_transformed_log_probs_are_stable_with_hard_maps_and_huge_logits():
    z, w, c, log_b, _, _ = _random_instance(0, hard=True)
    log_q = B.transformed_log_probs(z * 1e4, w, c, log_b)
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(z.shape[0], dtype=torch.float64))


def test_penalties_and_assembly():
    a = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    assert float(B.inverse_penalty(a, torch.linalg.inv(a))) == pytest.approx(0.0, abs=1e-24)
    assert float(B.inverse_penalty(a, torch.eye(2, dtype=torch.float64))) == pytest.approx(2 * (1 + 9))
    label_map = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(
        B.prior_matching_penalty(torch.tensor([0.5, 0.5]), label_map, torch.tensor([0.7, 0.3]))
    ) == pytest.approx(0.08)
    terms = B.bound_terms(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.1), torch.tensor(3.0))
    assert terms.bound == pytest.approx(1.8) and terms.tau_w1 == pytest.approx(0.3)
    assert float(
        B.assemble_bound(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.1), torch.tensor(3.0))
    ) == pytest.approx(1.8)


def test_hutchinson_inverse_penalty_is_unbiased():
    g = torch.Generator().manual_seed(0)
    a = torch.eye(20, dtype=torch.float64) + 0.3 * torch.randn(20, 20, generator=g, dtype=torch.float64)
    a_bar = torch.eye(20, dtype=torch.float64) + 0.1 * torch.randn(20, 20, generator=g, dtype=torch.float64)
    exact = float(B.inverse_penalty(a, a_bar))
    estimates = torch.stack([B.inverse_penalty(a, a_bar, probes=64, generator=g) for _ in range(400)])
    mean, sem = float(estimates.mean()), float(estimates.std() / 20)
    assert abs(mean - exact) < 4 * sem + 1e-12
    assert abs(mean - exact) / exact < 0.02
