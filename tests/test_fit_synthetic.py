"""The whole method on a seeded synthetic pair of tasks (no backbone, no Lightning)."""

import copy

import pytest
import torch

from tta import bound as B
from tta.distances import create_distance
from tta.fitting import EvalConfig, TransformConfig, evaluate_bound, initialise_transform, learn_transform
from tta.heads import HeadConfig, fit_linear_head
from tta.modules._datamodule import standardise
from tta.transforms import TaskTransform


def make_pair(
    seed: int = 0, d: int = 12, k_s: int = 5, k_t: int = 4, n_per_class: int = 120, return_perm: bool = False
):
    """Target classes are an affine image of reference classes 0..k_t-1 under a label permutation.

    Reference class ``s < k_t`` becomes target class ``perm[s]`` (returned with ``return_perm``).
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k_s, d, generator=g) * 2.5

    def sample(class_means, n):
        y = torch.arange(len(class_means)).repeat_interleave(n)
        return class_means[y] + torch.randn(len(y), d, generator=g), y

    m = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)
    v = torch.randn(d, generator=g)
    perm = torch.randperm(k_t, generator=g)
    tgt_means = (means[:k_t] @ m.T + v)[perm.argsort()]
    zs_tr, ys_tr = sample(means, n_per_class)
    zs_te, ys_te = sample(means, n_per_class // 2)
    zt_tr, yt_tr = sample(tgt_means, n_per_class)
    zt_te, yt_te = sample(tgt_means, n_per_class // 2)
    zs_tr, zs_te = standardise(zs_tr, zs_te)
    zt_tr, zt_te = standardise(zt_tr, zt_te)
    splits = (zs_tr, ys_tr), (zs_te, ys_te), (zt_tr, yt_tr), (zt_te, yt_te)
    return (*splits, perm) if return_perm else splits


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def head(pair):
    (zs, ys), *_ = pair
    return fit_linear_head(zs, ys, 5, HeadConfig(tau=0.2, w_gp=1e4, steps=300, batch_size=256), seed=0)


def _initialised(pair, mode):
    t = TaskTransform(5, 4, pair[0][0].shape[1], mode=mode)
    initialise_transform(t, pair[0], pair[2], TransformConfig(mode=mode))
    assert float((t.label_map @ t.prior - B.label_prior(pair[2][1], 4)).abs().sum()) < 1e-5
    return t


@pytest.fixture(scope="module")
def fitted(pair, head):
    distance = create_distance("exact")
    out = {}
    for mode in ("fixed_all", "learned_a", "learned_all"):
        t = _initialised(pair, mode)
        history = learn_transform(
            t, head, pair[0], pair[2], distance, TransformConfig(mode=mode, steps=120, batch_size=300), seed=0
        )
        out[mode] = (t, history, evaluate_bound(t, head, pair[1], pair[3], distance, EvalConfig()))
    return out


def test_bound_dominates_the_target_loss_of_the_transformed_classifier(fitted):
    for mode, (_, _, res) in fitted.items():
        assert res.bound >= res.transformed_target_ce, mode
        # the label lemma on the transformed reference sample
        assert res.transformed_source_ce <= res.weighted_source_loss + res.conditional_entropy + 1e-6
        assert res.bound_certified >= res.bound - 1e-9
        assert res.label_mismatch < 1e-6


def test_learned_all_is_tighter_than_fixed_all(fitted):
    learned, fixed = fitted["learned_all"][2].bound, fitted["fixed_all"][2].bound
    assert learned < fixed
    assert fitted["learned_a"][2].bound < fixed


def test_learning_lowers_the_training_objective(fitted):
    history = fitted["learned_all"][1]
    first = sum(h["bound"] for h in history[:10]) / 10
    last = sum(h["bound"] for h in history[-10:]) / 10
    assert last < first


def test_constraints_hold_after_optimisation(fitted):
    t = fitted["learned_all"][0]
    prior, label_map = t.prior.detach(), t.label_map.detach()
    assert torch.all(prior >= 0) and float(prior.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.all(label_map >= 0)
    torch.testing.assert_close(label_map.sum(0), torch.ones(5))
    assert fitted["learned_all"][2].inverse_error < 1.0
    assert fitted["learned_all"][2].cond_A < 1e3


def test_learned_label_map_recovers_the_planted_correspondence(fitted):
    perm = make_pair(return_perm=True)[-1]
    label_map = torch.tensor(fitted["learned_all"][2].label_map)
    assert label_map.shape == (4, 5)
    # reference class s < 4 was planted as target class perm[s]
    assert torch.equal(label_map[:, :4].argmax(0), perm)
    assert float(label_map[perm, torch.arange(4)].min()) > 0.9


def test_fixed_all_does_not_move(pair, fitted):
    t, history, _ = fitted["fixed_all"]
    assert history == []
    torch.testing.assert_close(t.matrix.detach(), torch.eye(t.feature_dim))


def test_faithful_algorithm_runs_and_is_finite(pair, head):
    distance = create_distance("exact")
    t = _initialised(pair, "learned_all")
    cfg = TransformConfig(algorithm="faithful", steps=20, batch_size=200, label_map_init="random")
    t.init_prior(B.label_prior(pair[0][1], 5), as_logits=False)
    t.init_label_map(None, generator=torch.Generator().manual_seed(0))
    history = learn_transform(t, head, pair[0], pair[2], distance, cfg)
    assert len(history) == 20 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    res = evaluate_bound(
        t, head, pair[1], pair[3], distance, EvalConfig(w_eval="classwise", tau_mode="reference")
    )
    assert res.bound > 0 and res.w_eval == "classwise"


def test_evaluation_does_not_modify_the_transform(pair, head, fitted):
    t = fitted["learned_all"][0]
    before = copy.deepcopy(t.state_dict())
    evaluate_bound(t, head, pair[1], pair[3], create_distance("exact"))
    for k, v in t.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_reference_tau_misses_the_inverse_factor(pair, head, fitted):
    t = fitted["learned_all"][0]
    full = evaluate_bound(t, head, pair[1], pair[3], create_distance("exact"), EvalConfig(tau_mode="full"))
    ref = evaluate_bound(
        t, head, pair[1], pair[3], create_distance("exact"), EvalConfig(tau_mode="reference")
    )
    inv_norm = float(torch.linalg.matrix_norm(t.exact_inverse(), ord=2))
    assert full.tau <= inv_norm * ref.tau * (1 + 1e-6) + 1e-9
    assert full.w1 == pytest.approx(ref.w1)
