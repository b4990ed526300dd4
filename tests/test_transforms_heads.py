"""TaskTransform constraints and the gradient-penalised head."""

import pytest
import torch

from tta import bound as B
from tta.heads import HeadConfig, fit_linear_head, input_gradient_norms, penalised_loss
from tta.transforms import TaskTransform, matching_label_map


def _transform(seed=0, k_s=6, k_t=4, d=5, mode="learned_all"):
    t = TaskTransform(k_s, k_t, d, mode=mode)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t.label_logits.copy_(torch.randn(k_t, k_s, generator=g) * 2)
        t.prior_logits.copy_(torch.randn(k_s, generator=g))
    return t


def test_initial_prior_is_exactly_the_source_prior():
    t = TaskTransform(3, 2, 4)
    p = torch.tensor([0.2, 0.3, 0.5])
    t.init_prior(p)
    torch.testing.assert_close(t.prior, p)
    t.init_prior(p, as_logits=False)  # the authors' initialisation differs
    assert not torch.allclose(t.prior, p)


@pytest.mark.parametrize("adjust", ["label_map", "prior"])
def test_match_label_marginal(adjust):
    t = _transform()
    p_t = torch.tensor([0.1, 0.2, 0.3, 0.4])
    residual = t.match_label_marginal(p_t, adjust=adjust, max_iter=20_000, tol=1e-10)
    assert residual <= 1e-8
    torch.testing.assert_close((t.label_map.double() @ t.prior.double()), p_t.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(t.label_map.sum(0), torch.ones(6))
    assert float(t.prior.detach().sum()) == pytest.approx(1.0, abs=1e-6)


def test_match_label_marginal_rejects_empty_target_class():
    with pytest.raises(ValueError, match="empty class"):
        _transform().match_label_marginal(torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_matching_label_map_is_column_stochastic_and_matches_priors():
    g = torch.Generator().manual_seed(0)
    mu_s, mu_t = torch.randn(6, 3, generator=g), torch.randn(4, 3, generator=g)
    p_s = torch.softmax(torch.randn(6, generator=g), 0)
    p_t = torch.softmax(torch.randn(4, generator=g), 0)
    b = matching_label_map(mu_s, mu_t, p_s, p_t)
    torch.testing.assert_close(b.sum(0), torch.ones(6, dtype=torch.float64))
    p_s, p_t = p_s.double() / p_s.double().sum(), p_t.double() / p_t.double().sum()
    torch.testing.assert_close(b @ p_s, p_t, atol=1e-9, rtol=0)


def test_matching_label_map_recovers_a_permutation():
    g = torch.Generator().manual_seed(1)
    mu_s = torch.randn(5, 8, generator=g) * 5
    perm = torch.tensor([3, 0, 4, 1, 2])
    mu_t = mu_s[perm.argsort()] + 0.01  # target class t has the mean of source class perm^-1
    b = matching_label_map(mu_s, mu_t, torch.full((5,), 0.2), torch.full((5,), 0.2))
    assert torch.equal(b.argmax(0), perm)
    assert float(b.max(0).values.min()) == pytest.approx(1.0)


def test_modes_freeze_the_right_parameters():
    learned_a = TaskTransform(3, 2, 4, mode="learned_a")
    assert not learned_a.prior_logits.requires_grad and not learned_a.label_logits.requires_grad
    assert learned_a.matrix.requires_grad and learned_a.shift.requires_grad
    fixed = TaskTransform(3, 2, 4, mode="fixed_all")
    assert not any(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match="unknown transform mode"):
        TaskTransform(3, 2, 4, mode="learned_b")  # type: ignore[arg-type]


def test_exact_inverse_and_diagnostics():
    t = TaskTransform(2, 2, 3)
    with torch.no_grad():
        t.matrix.copy_(torch.diag(torch.tensor([1.0, 2.0, 4.0])))
    torch.testing.assert_close(t.exact_inverse(), torch.diag(torch.tensor([1.0, 0.5, 0.25])))
    diag = t.diagnostics()
    assert diag["cond_A"] == pytest.approx(4.0)
    assert diag["inverse_error"] == pytest.approx((0**2 + 1**2 + 3**2) ** 0.5)


def _blobs(seed=0, n=600, d=10, k=4):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * 3
    y = torch.arange(n) % k
    z = means[y] + torch.randn(n, d, generator=g)
    return z, y


def test_input_gradient_norms_closed_form_matches_autograd():
    z, y = _blobs(n=40)
    head = torch.nn.Linear(10, 4)
    closed = input_gradient_norms(head, z, y)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(head(zz), y, reduction="sum"), zz)
    torch.testing.assert_close(closed, grad.norm(dim=1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [0.02, 0.2])
def test_penalised_head_keeps_gradients_near_tau(tau):
    """max ||grad_z loss|| over the training points stays within 10% of tau (and reaches it)."""
    z, y = _blobs()
    head = fit_linear_head(z, y, 4, HeadConfig(tau=tau, w_gp=1e4, steps=400, batch_size=256, lr=1e-2), seed=0)
    with torch.no_grad():
        norms = input_gradient_norms(head, z, y)
        random = input_gradient_norms(
            head, z, torch.randint(0, 4, y.shape, generator=torch.Generator().manual_seed(1))
        )
    assert float(torch.maximum(norms.max(), random.max())) <= 1.10 * tau
    assert float(norms.max()) >= 0.5 * tau  # the penalty is active, not a degenerate zero head
    acc = (head(z).argmax(-1) == y).float().mean()
    assert acc > 0.9


def test_unpenalised_head_is_plain_logistic_regression():
    z, y = _blobs()
    head = fit_linear_head(z, y, 4, HeadConfig(w_gp=0.0, steps=200), seed=0)
    assert (head(z).argmax(-1) == y).float().mean() > 0.97
    _, parts = penalised_loss(head, z, y, tau=0.02, w_gp=0.0)
    assert float(parts["penalty"]) == 0.0


def test_fit_is_reproducible():
    z, y = _blobs()
    cfg = HeadConfig(steps=30)
    h1, h2 = fit_linear_head(z, y, 4, cfg, seed=3), fit_linear_head(z, y, 4, cfg, seed=3)
    torch.testing.assert_close(h1.weight, h2.weight, rtol=0, atol=0)


def test_label_prior_and_counts():
    y = torch.tensor([0, 0, 2, 2, 2, 1])
    torch.testing.assert_close(B.label_prior(y, 4), torch.tensor([2, 1, 3, 0]) / 6.0)
