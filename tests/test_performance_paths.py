"""Correctness of the fast paths of tta's performance work (issue 6).

- the per-label exact fast path (one network simplex per class, gradient assembled from the plan's
  nonzeros and the dual potentials) equals the dense path (``cdist`` + POT ``emd2`` per class) in value
  and gradients, and the class-wise decomposition equals the joint EMD on the label-aware cost;
- ``SubsampledDistance`` is exact below its threshold, conservative above it (Jensen) with an interval
  that covers the mean of many replicates, and ``evaluate_bound`` reports it as an estimate;
- convergence-based stopping (``TransformConfig.patience``) stops and keeps the best state;
- the default objective balances float32 masses with 100 classes.
"""

from __future__ import annotations

import math

import ot
import pytest
import torch
import torch.nn.functional as F

from tta.distances import (
    AutoDistance,
    DistanceEstimator,
    ExactDistance,
    SubsampledDistance,
    pairwise_distances,
)
from tta.fitting import EvalConfig, TransformConfig, evaluate_bound, initialise_transform, learn_transform
from tta.heads import HeadConfig, fit_linear_head
from tta.transforms import TaskTransform


class DenseExact(ExactDistance):
    """The pre-fast-path solver: generic per-label loop, dense cdist, POT's emd2 gradients."""

    def _per_label(self, *args):  # type: ignore[no-untyped-def]
        return DistanceEstimator._per_label(self, *args)

    def _unlabelled(self, x, y, a, b):  # type: ignore[no-untyped-def]
        return self._solve(pairwise_distances(x.double(), y.double()), a, b, x.dtype)


def _soft_problem(seed: int, n: int = 48, m: int = 36, d: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5
    x_labels = torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)
    y_cls = torch.arange(m) % k
    y_labels = F.one_hot(y_cls, k).double()
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    a = a / a.sum()
    mass = a @ x_labels  # (k,) class masses of the source
    b = mass[y_cls] / torch.bincount(y_cls, minlength=k).double()[y_cls]  # the same class masses
    return x, y, a, b, x_labels, y_labels


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_per_label_matches_dense_value_and_gradients(seed):
    x, y, a, b, xl, yl = _soft_problem(seed)
    out = {}
    for name, est in (("fast", ExactDistance()), ("dense", DenseExact())):
        xs, ys, as_, bs = (t.clone().requires_grad_(True) for t in (x, y, a, b))
        value = est(xs, ys, as_, bs, xl, yl, 1e6)
        assert est.diagnostics["path"] == "per_label"
        value.backward()
        out[name] = (float(value.detach()), xs.grad, ys.grad, as_.grad, bs.grad)
    assert out["fast"][0] == pytest.approx(out["dense"][0], rel=1e-12)
    for g_fast, g_dense in zip(out["fast"][1:], out["dense"][1:]):
        torch.testing.assert_close(g_fast, g_dense, rtol=1e-9, atol=1e-10)


def test_class_decomposition_equals_joint_emd():
    x, y, a, b, _, yl = _soft_problem(3)
    xl = F.one_hot(torch.arange(x.shape[0]) % 3, 3).double()  # hard source labels
    b = (a @ xl)[yl.argmax(1)] / yl.sum(0)[yl.argmax(1)]  # matching class masses
    lam = 1e6
    cost = torch.cdist(x, y) + lam * torch.cdist(xl, yl)  # the joint label-aware ground cost
    joint = float(ot.emd2(a.numpy(), b.numpy() * (a.sum() / b.sum()).item(), cost.numpy()))
    for est in (ExactDistance(), AutoDistance()):
        value = est(x, y, a, b, xl, yl, lam)
        assert est.diagnostics["path"] == "per_label"
        assert est.diagnostics["num_subproblems"] == 3
        assert float(value) == pytest.approx(joint, rel=1e-10)


def test_auto_fast_path_equals_exact_with_soft_labels():
    x, y, a, b, xl, yl = _soft_problem(4)
    auto, exact = AutoDistance(), DenseExact()
    assert float(auto(x, y, a, b, xl, yl, 1e6)) == pytest.approx(
        float(exact(x, y, a, b, xl, yl, 1e6)), rel=1e-12
    )
    assert auto.diagnostics["solver"] == "exact"


def test_subsample_is_exact_below_its_threshold():
    x, y, a, b, xl, yl = _soft_problem(5)
    sub = SubsampledDistance(max_points=100, replicates=3)
    assert float(sub(x, y, a, b, xl, yl, 1e6)) == pytest.approx(
        float(ExactDistance()(x, y, a, b, xl, yl, 1e6))
    )
    assert sub.diagnostics["estimate"] is False
    assert sub.diagnostics["w1_ci_low"] == sub.diagnostics["w1_ci_high"]


def test_subsample_is_conservative_and_its_interval_covers_the_replicate_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 3, generator=g, dtype=torch.float64)
    y = torch.randn(900, 3, generator=g, dtype=torch.float64) * 1.3 + 0.4
    exact = float(ExactDistance()(x, y))
    est = SubsampledDistance(max_points=150, replicates=8, seed=1)
    value = float(est(x, y))
    diag = est.diagnostics
    assert diag["estimate"] is True and diag["replicates"] == 8
    low, high = diag["w1_ci_low"], diag["w1_ci_high"]
    assert low < value < high
    # Jensen: E W1(subsample) >= W1(full); the subsample estimate sits above the exact value
    assert value > exact
    assert exact < high
    # the interval covers the expectation, estimated from many more replicates (another seed)
    many = float(SubsampledDistance(max_points=150, replicates=64, seed=2)(x, y))
    assert low <= many <= high


@pytest.fixture(scope="module")
def small_pair():
    g = torch.Generator().manual_seed(0)
    k, d = 3, 4
    means = 3 * torch.randn(k, d, generator=g)

    def draw(per, shift):
        yy = torch.arange(k).repeat_interleave(per)
        return means[yy] + shift + torch.randn(k * per, d, generator=g), yy

    src, tgt = draw(60, 0.0), draw(60, 0.3)
    head = fit_linear_head(src[0], src[1], k, HeadConfig(tau=0.2, w_gp=10.0, steps=60), seed=0)
    for p in head.parameters():
        p.requires_grad_(False)
    return src, tgt, head


def test_evaluate_bound_reports_a_subsampled_w1_as_an_estimate(small_pair):
    src, tgt, head = small_pair
    t = TaskTransform(3, 3, 4)
    initialise_transform(t, src, tgt)
    res = evaluate_bound(t, head, src, tgt, SubsampledDistance(max_points=40, replicates=4), EvalConfig())
    assert res.w1_is_estimate is True
    low, high = res.bound_ci
    assert low < res.bound < high
    exact = evaluate_bound(t, head, src, tgt, ExactDistance())
    assert "w1_is_estimate" not in exact.to_dict()
    assert res.w1 > exact.w1  # conservative


def test_terms_only_evaluation_equals_the_full_one(small_pair):
    """The selection's short evaluation (``terms_only``) gives the full evaluation's terms exactly."""
    src, tgt, head = small_pair
    t = TaskTransform(3, 3, 4)
    initialise_transform(t, src, tgt)
    learn_transform(t, head, src, tgt, ExactDistance(), TransformConfig(steps=5, select_every=0))
    full = evaluate_bound(t, head, src, tgt, ExactDistance())
    short = evaluate_bound(t, head, src, tgt, ExactDistance(), terms_only=True)
    keys = ("weighted_source_loss", "conditional_entropy", "tau", "w1", "bound")
    assert set(keys) <= set(short.to_dict()) and "transformed_target_ce" not in short.to_dict()
    assert {k: getattr(short, k) for k in keys} == {k: getattr(full, k) for k in keys}


def test_patience_stops_when_the_selection_bound_stalls(small_pair):
    src, tgt, head = small_pair
    frozen = TransformConfig(steps=30, select_every=1, lr=0.0, lr_prior=0.0, lr_feature_map=0.0, patience=2)
    t = TaskTransform(3, 3, 4)
    initialise_transform(t, src, tgt, frozen)
    history = learn_transform(t, head, src, tgt, ExactDistance(), frozen)
    assert len(history) == 2  # nothing moves: two stale evaluations, then stop
    moving = TransformConfig(steps=30, select_every=1, patience=0)
    t2 = TaskTransform(3, 3, 4)
    initialise_transform(t2, src, tgt, moving)
    assert len(learn_transform(t2, head, src, tgt, ExactDistance(), moving)) == 30


def test_default_objective_balances_float32_masses_with_100_classes():
    g = torch.Generator().manual_seed(0)
    k, d = 100, 8
    means = 4 * torch.randn(k, d, generator=g)
    yy = torch.arange(k).repeat_interleave(6)
    src = (means[yy] + torch.randn(yy.numel(), d, generator=g), yy)
    tgt = (means[yy] + 0.2 + torch.randn(yy.numel(), d, generator=g), yy)
    head = fit_linear_head(src[0], src[1], k, HeadConfig(tau=0.2, w_gp=10.0, steps=20), seed=0)
    cfg = TransformConfig(steps=2, batch_size=300, select_every=0)
    t = TaskTransform(k, k, d)
    initialise_transform(t, src, tgt, cfg)
    history = learn_transform(t, head, src, tgt, AutoDistance(), cfg)
    assert len(history) == 2 and all(math.isfinite(h["w1"]) for h in history)
