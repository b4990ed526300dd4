"""The ``logit`` bound variant: the odds inequality, the transport against brute force and POT, validity."""

import itertools
import math

import pytest
import torch
from test_fit_synthetic import make_pair

from tta import bound as B
from tta.distances import transport_cost
from tta.fitting import AnalysisSettings, EvalConfig, TransformConfig, analyze_features
from tta.heads import HeadConfig
from tta.modules import FeaturePair
from tta.transforms import TaskTransform


def _random_label_map(k_t: int, k_s: int, generator: torch.Generator, sparsity: float = 0.5) -> torch.Tensor:
    b = torch.rand(k_t, k_s, generator=generator, dtype=torch.float64)
    b[b < sparsity] = 0
    for s in range(k_s):  # every column a distribution
        if b[:, s].sum() == 0:
            b[s % k_t, s] = 1.0
    for t in range(k_t):  # every target class reached
        if b[t].sum() == 0:
            b[t, t % k_s] = 1.0
    return b / b.sum(0, keepdim=True)


@pytest.mark.parametrize("seed", range(5))
def test_the_odds_cost_bounds_the_loss_after_any_move(seed):
    """g_t(u') <= Phi(g_t(u), L_t(u, u')) <= g_t(u) + |L_t| for random logits, moves and sparse maps."""
    g = torch.Generator().manual_seed(seed)
    k_s, k_t, n = 6, 3, 400
    label_map = _random_label_map(k_t, k_s, g)
    u = 4 * torch.randn(n, k_s, generator=g, dtype=torch.float64)
    v = u + 3 * torch.randn(n, k_s, generator=g, dtype=torch.float64)
    before, after = B.label_losses(u, label_map), B.label_losses(v, label_map)
    for t in range(k_t):
        move = B.log_odds_displacement(u, v, label_map[t]).diagonal()  # (n,): each u_i to its own v_i
        phi = B.odds_transport_cost(before[:, t], move.unsqueeze(1).expand(n, n)).diagonal()
        assert bool((after[:, t] <= phi + 1e-9).all())
        assert bool((phi <= before[:, t] + move.abs() + 1e-9).all())


def test_the_odds_cost_is_exact_for_a_uniform_move_of_the_other_logits():
    """One-hot row, all other logits moved by the same amount: Phi is the exact loss after the move."""
    label_map = torch.eye(3, dtype=torch.float64)
    u = torch.tensor([[3.0, 0.5, -1.0]], dtype=torch.float64)
    v = u + torch.tensor([[-1.0, 2.0, 2.0]], dtype=torch.float64)
    move = B.log_odds_displacement(u, v, label_map[0])
    assert float(move) == pytest.approx(3.0)
    phi = B.odds_transport_cost(B.label_losses(u, label_map)[:, 0], move)
    assert float(phi) == pytest.approx(float(B.label_losses(v, label_map)[0, 0]), rel=1e-12)


def test_a_dense_row_gives_the_oscillation():
    row = torch.full((4,), 0.25, dtype=torch.float64)
    u, v = torch.zeros(1, 4, dtype=torch.float64), torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    assert float(B.log_odds_displacement(u, v, row)) == pytest.approx(5.0)


def test_transport_cost_equals_the_brute_force_minimum_over_couplings():
    """Uniform weights, n = m: the optimum is a permutation (Birkhoff); POT's value and gradient agree."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    c = cost.detach()
    brute = min(sum(float(c[i, p[i]]) for i in range(5)) / 5 for p in itertools.permutations(range(5)))
    value = transport_cost(cost)
    assert float(value) == pytest.approx(brute, abs=1e-12)
    value.backward()  # d OT / d C is the optimal plan: a permutation matrix / 5
    assert torch.allclose(cost.grad.sum(0), torch.full((5,), 0.2, dtype=torch.float64))
    assert float((cost.grad * cost).sum()) == pytest.approx(brute, abs=1e-12)
    import ot

    assert float(value) == pytest.approx(
        float(ot.emd2(torch.full((5,), 0.2), torch.full((5,), 0.2), cost.detach()))
    )
    with pytest.raises(ValueError, match="detached weights"):
        transport_cost(cost, torch.full((5,), 0.2, requires_grad=True), torch.full((5,), 0.2))


def test_logit_transport_bounds_the_target_loss_for_any_logits():
    """Random reference and target logits, soft sparse map with BD = p_T: E_T g <= transport."""
    g = torch.Generator().manual_seed(3)
    k_s, k_t, n, m = 5, 3, 60, 45
    label_map = _random_label_map(k_t, k_s, g)
    y_s, y_t = torch.arange(n) % k_s, torch.arange(m) % k_t
    prior = torch.full((k_s,), 1.0 / k_s, dtype=torch.float64)
    a = prior[y_s] / torch.bincount(y_s).double()[y_s]
    p_t = label_map @ prior
    b = p_t[y_t] / torch.bincount(y_t).double()[y_t]
    u_s = 3 * torch.randn(n, k_s, generator=g, dtype=torch.float64)
    u_t = 3 * torch.randn(m, k_s, generator=g, dtype=torch.float64)
    transport, reference = B.logit_transport(u_s, y_s, a, u_t, y_t, b, label_map, transport_cost)
    target_loss = (b * B.label_losses(u_t, label_map).gather(1, y_t.unsqueeze(1)).squeeze(1)).sum()
    assert float(target_loss) <= float(transport) + 1e-9
    transformed_source = (a * (label_map.T[y_s] * B.label_losses(u_s, label_map)).sum(1)).sum()
    assert float(reference) == pytest.approx(float(transformed_source), rel=1e-12)
    # at zero displacement (the target logits are the reference ones) the transport is exactly the loss
    same, ref = B.logit_transport(
        u_s, y_s, a, u_s, y_s, a, torch.eye(k_s, dtype=torch.float64), transport_cost
    )
    assert float(same) == pytest.approx(float(ref), rel=1e-9)


def _settings(steps: int = 30) -> AnalysisSettings:
    head = HeadConfig(tau=0.2, steps=80)
    standard = HeadConfig(w_gp=0.0, steps=80, weight_decay=1e-2)
    transform = TransformConfig(
        steps=steps, batch_size=200, variant="logit", select_every=10, select_points=300
    )
    return AnalysisSettings(standard, head, standard, transform, EvalConfig(), "exact", "exact")


@pytest.mark.parametrize("seed", range(3))
def test_the_logit_bound_covers_the_classifier_it_certifies(seed):
    s_tr, s_te, t_tr, t_te = make_pair(seed=seed)
    features = FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])
    _, result = analyze_features(features, _settings(), seed=seed)
    report = result.report
    assert report.variant == "logit" and report.tau is None and report.w1 is None
    assert report.bound >= report.transformed_target_ce
    assert report.transport >= report.transformed_target_ce
    assert report.bound == pytest.approx(
        report.weighted_source_loss + report.conditional_entropy + report.tau_w1
    )
    assert report.transformed_source_ce <= report.weighted_source_loss + report.conditional_entropy + 1e-9
    assert result.transformed_classifier.target_ce == pytest.approx(report.transformed_target_ce, rel=1e-5)
    assert report.label_mismatch < 1e-8 and math.isfinite(report.cond_A)


def test_the_materialised_feature_map_is_the_learned_logit_map():
    """After the fit, W Ā (z - b) + c equals (W + Δ) z + c + δc: the certified classifier has an (A, b)."""
    s_tr, s_te, t_tr, t_te = make_pair(seed=1)
    features = FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])
    analysis, _ = analyze_features(features, _settings(), seed=0)
    t, head = analysis.transform, analysis.source_head
    z = t_te[0].double()
    m, c = t.logit_map(head.weight.double(), head.bias.double())
    direct = z @ m.detach().T + c.detach()
    w = head.weight.detach().double()
    through = (z - t.shift.double()) @ (w @ t.inverse.double()).T + head.bias.double()
    assert torch.allclose(direct, through, atol=1e-4)
    eye = torch.eye(t.feature_dim, dtype=torch.float64)
    assert torch.allclose(t.matrix.double() @ t.inverse.double(), eye, atol=1e-4)


def test_cond_a_of_the_materialised_map_equals_the_full_svd():
    """The low-rank singular values of A (Ā = I + W⁺Δ) give the same cond(A) and σ_min as a full SVD,
    and a changed Ā falls back to the SVD."""
    g = torch.Generator().manual_seed(4)
    d, k = 40, 5
    t = TaskTransform(k, 3, d, feature_map="logit")
    with torch.no_grad():
        t.logit_delta.copy_(0.3 * torch.randn(k, d, generator=g))
        t.logit_bias_delta.copy_(torch.randn(k, generator=g))
    w, c = torch.randn(k, d, generator=g), torch.randn(k, generator=g)
    t.materialise_logit_map(w, c)
    fast = t.diagnostics()
    sv = torch.linalg.svdvals(t.matrix.detach().double())
    assert fast["cond_A"] == pytest.approx(float(sv.max() / sv.min()), rel=1e-4)
    assert fast["min_singular_value_A"] == pytest.approx(float(sv.min()), rel=1e-4)
    assert fast["cond_A"] > 1.5  # the update is not a no-op
    with torch.no_grad():
        t.inverse.mul_(2.0)  # Ā no longer I + UV: the factors must not be used
        t.matrix.mul_(0.5)
    sv = torch.linalg.svdvals(t.matrix.detach().double())
    assert t.diagnostics()["min_singular_value_A"] == pytest.approx(float(sv.min()), rel=1e-6)


def test_the_variant_needs_a_logit_feature_map_and_the_tta_algorithm():
    from tta.distances import create_distance
    from tta.fitting import TransformFitter

    s_tr, _, t_tr, _ = make_pair(seed=0)
    head = torch.nn.Linear(s_tr[0].shape[1], 5)
    with pytest.raises(ValueError, match="feature_map='logit'"):
        TransformFitter(
            TaskTransform(5, 4, s_tr[0].shape[1]),
            head,
            s_tr,
            t_tr,
            create_distance("exact"),
            _settings().transform,
        )
    with pytest.raises(ValueError, match="tta' algorithm only"):
        TransformConfig(variant="logit", algorithm="faithful")


def _candidate_inputs(seed: int, k_s: int, k_t: int):
    g = torch.Generator().manual_seed(seed)
    d, n = 6, 20
    mu_s, mu_t = torch.randn(k_s, d, generator=g), torch.randn(k_t, d, generator=g)
    labels = torch.arange(k_t).repeat_interleave(n)
    log_probs = torch.log_softmax(3 * torch.randn(k_t * n, k_s, generator=g, dtype=torch.float64), dim=-1)
    p_s = torch.rand(k_s, generator=g, dtype=torch.float64) + 0.5
    p_t = torch.rand(k_t, generator=g, dtype=torch.float64) + 0.5
    return mu_s, mu_t, log_probs, labels, p_s / p_s.sum(), p_t / p_t.sum()


@pytest.mark.parametrize(("seed", "k_s", "k_t"), [(0, 5, 3), (1, 4, 4), (2, 3, 5), (3, 6, 2)])
def test_every_label_map_candidate_matches_the_target_prior(seed, k_s, k_t):
    """BD = p_T, B column-stochastic, D a distribution; the assignment is the cheapest injection."""
    from tta.transforms import label_map_candidates

    mu_s, mu_t, log_probs, labels, p_s, p_t = _candidate_inputs(seed, k_s, k_t)
    found = label_map_candidates(mu_s, mu_t, log_probs, labels, p_s, p_t)
    assert set(found) == {"matching", "logit_matching", "nearest"} | ({"assignment"} if k_t <= k_s else set())
    for prior, label_map in found.values():
        assert torch.allclose(label_map @ prior, p_t, atol=1e-12)
        assert torch.allclose(label_map.sum(0), torch.ones(k_s, dtype=torch.float64), atol=1e-12)
        assert float(prior.sum()) == pytest.approx(1.0) and bool((prior >= 0).all())
    cost = torch.stack([-log_probs[labels == t].mean(0) for t in range(k_t)], dim=1)  # (K_S, K_T)
    nearest_prior, nearest_map = found["nearest"]
    for t in range(k_t):  # every target class sits on its cheapest reference class, and only there
        s = int(cost[:, t].argmin())
        assert float(nearest_map[t, s]) > 0 and float(nearest_prior[s]) > 0
        assert float(nearest_map[t, nearest_prior > 0].sum()) == pytest.approx(float(nearest_map[t, s]))
    if k_t <= k_s:
        prior, label_map = found["assignment"]
        used = torch.nonzero(prior > 0).flatten()
        assert len(used) == k_t and B.conditional_entropy(label_map, prior) == pytest.approx(0.0, abs=1e-12)
        chosen = sum(float(p_t[t] * cost[int(label_map[t].mul(prior > 0).argmax()), t]) for t in range(k_t))
        brute = min(
            sum(float(p_t[t] * cost[s, t]) for t, s in enumerate(perm))
            for perm in itertools.permutations(range(k_s), k_t)
        )
        assert chosen == pytest.approx(brute, rel=1e-12)


def _bound_settings(label_map_init: str) -> AnalysisSettings:
    settings = _settings()
    return AnalysisSettings(
        settings.source_head,
        settings.probe,
        settings.standard_probe,
        TransformConfig(
            steps=30,
            batch_size=200,
            variant="logit",
            select_every=10,
            select_points=300,
            label_map_init=label_map_init,  # type: ignore[arg-type]
        ),
        EvalConfig(),
        "exact",
        "exact",
    )


@pytest.mark.parametrize("seed", range(3))
def test_the_label_map_chosen_by_the_bound_is_valid_and_no_looser_at_the_start(seed):
    """label_map_init: bound keeps the lowest-scoring candidate (matching among them), and the bound
    still covers the classifier it certifies. The target is 4 of the 5 reference classes, so the
    assignment (D = 0 on the fifth class) is the right one and must win."""
    s_tr, s_te, t_tr, t_te = make_pair(seed=seed)
    features = FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])
    analysis, result = analyze_features(features, _bound_settings("bound"), seed=seed)
    choice = analysis.transform_phase.label_map_choice
    assert choice is not None and set(choice["scores"]) == {
        "matching",
        "logit_matching",
        "assignment",
        "nearest",
    }
    assert choice["scores"][choice["chosen"]] == min(choice["scores"].values())
    assert choice["chosen"] == "assignment"
    report = result.report
    assert report.bound >= report.transformed_target_ce and report.transport >= report.transformed_target_ce
    prior = torch.tensor(report.prior)
    assert int((prior == 0).sum()) == 1 and report.conditional_entropy == pytest.approx(0.0, abs=1e-9)
    assert result.label_map_choice == choice
    _, matched = analyze_features(features, _bound_settings("matching"), seed=seed)
    assert report.bound <= matched.report.bound + 1e-6


def test_the_label_map_chosen_by_the_bound_is_for_the_logit_variant_only():
    with pytest.raises(ValueError, match="only the logit variant"):
        TransformConfig(variant="paper", label_map_init="bound")
