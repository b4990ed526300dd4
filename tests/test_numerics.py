"""Numerical health: the log B floor, λ = 1e6, the cond(A) guard, non-finite values, collected warnings."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from _helpers import quiet_trainer
from test_fit_synthetic import make_pair

from tta import bound as B
from tta.distances import AutoDistance, ExactDistance, SinkhornDistance
from tta.errors import NumericalWarning, TTANumericalError
from tta.fitting import (
    ConditionGuard,
    TransformConfig,
    WarningLog,
    check_finite_gradients,
    initialise_transform,
    learn_transform,
    step_objective,
)
from tta.heads import HeadConfig, fit_linear_head
from tta.transforms import TaskTransform, condition_number

# ---------------------------------------------------------------------------- log of B·softmax


def _zero_row_map(dtype):
    """A column-stochastic B with exact zeros and a zero row (target class 2 receives no reference class)."""
    b = torch.zeros(3, 4, dtype=dtype)
    b[0, :2] = 1.0
    b[1, 2:] = 1.0
    return b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e4, -1e4])
def test_log_probs_finite_with_zero_entries_and_huge_logits(dtype, scale):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(12, 3, generator=g) * scale).to(dtype)
    w = torch.randn(4, 3, generator=g).to(dtype).requires_grad_(True)
    c = torch.zeros(4, dtype=dtype)
    label_map = _zero_row_map(dtype)
    log_b = label_map.log()  # exact -inf entries
    log_q = B.transformed_log_probs(z, w, c, log_b)
    assert torch.isfinite(log_q).all()
    # the empty target class sits at the floor; the others are log-probabilities summing to 1
    assert float(log_q[:, 2].detach().max()) <= B.log_floor(dtype) + 1e-3
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(12, dtype=dtype))
    labels = torch.arange(12) % 4
    loss = B.transformed_source_loss(log_q, labels, torch.full((4,), 0.25, dtype=dtype), label_map)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(w.grad).all()
    norms = B.gradient_norms(z, w.detach(), c, log_b)
    assert torch.isfinite(norms).all()
    assert (
        float(B.lipschitz_constant(z, w.detach(), c, log_b))
        <= float(B.global_lipschitz_bound(w.detach())) + 1e-4
    )


def test_log_floor_value_and_no_effect_above_it():
    tiny = torch.finfo(torch.float32).tiny
    assert B.log_floor(torch.float32) == pytest.approx(math.log(tiny)) and B.log_floor(
        torch.float32
    ) >= math.log(tiny)
    assert float(torch.tensor(B.log_floor(torch.float32)).exp()) >= tiny
    assert B.log_floor(torch.float64) == pytest.approx(-708.396, abs=1e-3)
    g = torch.Generator().manual_seed(1)
    log_b = torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64) * 5, 0)
    assert torch.equal(B.safe_log_label_map(log_b), log_b)  # nothing below the floor: unchanged
    nan = torch.tensor([float("nan"), -float("inf")])
    out = B.safe_log_label_map(nan)
    assert math.isnan(float(out[0])) and float(out[1]) == B.log_floor(torch.float32)  # NaN is not hidden


def test_floored_log_probs_match_the_unfloored_formula_when_b_is_positive():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(20, 4, generator=g, dtype=torch.float64)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    label_map = torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), 0)
    direct = torch.log(torch.softmax(z @ w.T + c, -1) @ label_map.T)
    torch.testing.assert_close(B.transformed_log_probs(z, w, c, label_map.log()), direct, rtol=1e-12, atol=0)


def test_hard_label_map_with_no_smoothing_keeps_finite_logits():
    t = TaskTransform(4, 3, 2)
    hard = _zero_row_map(torch.float64)
    t.init_label_map(hard, smoothing=0.0)
    assert torch.isfinite(t.label_logits).all()
    torch.testing.assert_close(t.label_map.double(), hard, atol=1e-30, rtol=0)
    prior = torch.full((4,), 0.25)
    assert 0.0 <= float(B.conditional_entropy(t.label_map, prior)) < 1e-30


# ---------------------------------------------------------------------------- λ = 1e6 in the costs


@pytest.mark.parametrize("estimator", [ExactDistance, SinkhornDistance, AutoDistance])
@pytest.mark.parametrize("matched", [True, False])
def test_label_cost_1e6_in_float32_is_finite_and_differentiable(estimator, matched):
    g = torch.Generator().manual_seed(3)
    n, k = 40, 3
    x = torch.randn(n, 5, generator=g).requires_grad_(True)
    y = torch.randn(n, 5, generator=g) + 1.0
    ly = F.one_hot(torch.arange(n) % k, k).float()
    soft = torch.softmax(torch.randn(n, k, generator=g) * 4, 1)
    lx = ly if matched else soft  # soft source labels: class masses differ, joint path with λ√2 δ
    est = estimator()
    value = est(x, y, None, None, lx, ly, 1e6)
    assert est.diagnostics["path"] == ("per_label" if matched else "joint")
    assert torch.isfinite(value) and float(value) >= 0
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(grad).all()
    # the λ part is exact: λ√2 × (the mass that must change label), δ = ½‖m_S − m_T‖₁ (mixture convention)
    delta = 0.5 * float((lx.double().mean(0) - ly.double().mean(0)).abs().sum())
    reference = ExactDistance()(x.detach().double(), y.double(), None, None, lx.double(), ly.double(), 1e6)
    feature_part = float(reference) - 1e6 * math.sqrt(2) * delta
    assert (
        -1e-6 * float(reference)
        <= feature_part
        <= 1e-6 * float(reference) + float(torch.cdist(x.detach(), y).max())
    )
    assert float(value) == pytest.approx(float(reference), rel=0.05 if matched else 1e-4)


# ---------------------------------------------------------------------------- cond(A)


def test_condition_number_closed_forms():
    assert condition_number(torch.diag(torch.tensor([1.0, 2.0, 8.0]))) == pytest.approx(8.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert condition_number(q) == pytest.approx(1.0, rel=1e-12)
    assert condition_number(torch.tensor([[1.0, 2.0], [2.0, 4.0]])) > 1e15  # singular
    assert condition_number(torch.zeros(3, 3)) == math.inf
    assert condition_number(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])) == math.inf
    t = TaskTransform(2, 2, 3)
    with torch.no_grad():
        t.matrix.copy_(torch.diag(torch.tensor([1.0, 3.0, 0.5])))
    assert t.diagnostics()["cond_A"] == pytest.approx(6.0)


def test_condition_guard_restores_the_last_well_conditioned_state():
    t = TaskTransform(2, 2, 3)
    guard = ConditionGuard(TransformConfig(steps=100, select_every=10, max_condition=100.0))
    assert guard.due(-1) and guard.due(9) and not guard.due(10) and guard.due(99)
    assert guard.check(t, -1)
    with torch.no_grad():
        t.matrix.copy_(torch.diag(torch.tensor([1.0, 5.0, 1.0])))
    assert guard.check(t, 9) and guard.good_step == 9
    with torch.no_grad():
        t.matrix.copy_(torch.diag(torch.tensor([1.0, 500.0, 1.0])))
    with pytest.warns(NumericalWarning, match=r"cond\(A\) = 500 exceeds transform.max_condition = 100"):
        assert not guard.check(t, 19)
    torch.testing.assert_close(t.matrix.detach(), torch.diag(torch.tensor([1.0, 5.0, 1.0])))
    assert guard.record() == {
        "stopped_ill_conditioned_at": 19,
        "cond_A_at_stop": 500.0,
        "max_condition": 100.0,
    }
    off = ConditionGuard(TransformConfig(max_condition=None))
    assert not off.enabled and not off.due(-1)
    assert ConditionGuard(TransformConfig(select_every=0)).every == ConditionGuard.DEFAULT_EVERY


@pytest.fixture(scope="module")
def pair_and_head():
    pair = make_pair(seed=4, d=6, k_s=4, k_t=3, n_per_class=60)
    head = fit_linear_head(pair[0][0], pair[0][1], 4, HeadConfig(tau=0.2, steps=80, batch_size=128), seed=0)
    return pair, head


def _learn(pair_and_head, **config):
    pair, head = pair_and_head
    cfg = TransformConfig(steps=20, batch_size=120, select_every=5, select_points=200, **config)
    t = TaskTransform(4, 3, 6, mode=cfg.mode)
    initialise_transform(t, pair[0], pair[2], cfg)
    return t, learn_transform(t, head, pair[0], pair[2], ExactDistance(), cfg, seed=0)


def test_learn_transform_stops_when_a_is_ill_conditioned(pair_and_head):
    # any step moves A away from I: cond(A) > 1 + 1e-9 at the first check stops the fit there
    with pytest.warns(NumericalWarning, match="stopped early and kept the initial state"):
        t, history = _learn(pair_and_head, max_condition=1.0 + 1e-9, lr_feature_map=1e-2)
    assert len(history) == 5 and history[-1]["stopped_ill_conditioned"] == 1.0
    assert history[-1]["cond_A"] > 1.0 + 1e-9
    torch.testing.assert_close(t.matrix.detach(), torch.eye(6))  # the initial, well-conditioned state
    torch.testing.assert_close(t.inverse.detach(), torch.eye(6))
    # a generous threshold never fires: the full run, cond(A) recorded at every selection step
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        _, full = _learn(pair_and_head, max_condition=1e6, patience=0)
    assert len(full) == 20 and [i for i, h in enumerate(full) if "cond_A" in h] == [4, 9, 14, 19]
    assert all(1.0 <= h["cond_A"] < 1e6 for h in full if "cond_A" in h)


def test_non_finite_objective_raises_with_step_and_fix(pair_and_head):
    pair, head = pair_and_head
    cfg = TransformConfig(steps=5, batch_size=120)
    t = TaskTransform(4, 3, 6)
    initialise_transform(t, pair[0], pair[2], cfg)
    p_t = B.label_prior(pair[2][1], 3)
    class_losses = torch.tensor([0.5, float("inf"), 0.5, 0.5])
    with pytest.raises(
        TTANumericalError, match=r"transform step 3 .*weighted_source_loss.*lower transform\.lr"
    ):
        step_objective(t, head, class_losses, pair[0], pair[2], p_t, ExactDistance(), cfg, 0, 3)
    with torch.no_grad():
        t.shift[0] = float("nan")
    with pytest.raises(TTANumericalError, match=r"shift became NaN or infinite before transform step 7"):
        step_objective(t, head, torch.ones(4), pair[0], pair[2], p_t, ExactDistance(), cfg, 0, 7)


def test_non_finite_gradient_raises():
    t = TaskTransform(2, 2, 3)
    t.matrix.grad = torch.zeros(3, 3)
    check_finite_gradients(t, 0)  # finite: nothing happens
    t.matrix.grad[0, 0] = float("inf")
    with pytest.raises(TTANumericalError, match="non-finite gradient of matrix at transform step 4"):
        check_finite_gradients(t, 4)


# ---------------------------------------------------------------------------- warnings into the result


def test_warning_log_collects_numerical_warnings_once_each():
    log = WarningLog()
    for step in range(3):
        with pytest.warns(NumericalWarning), log.capture(f"transform step {step}"):
            warnings.warn("A is nearly singular", NumericalWarning, stacklevel=1)
            warnings.warn("unrelated", DeprecationWarning, stacklevel=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g)
    # an unconverged OT solve warns once from the distance driver, whatever the estimator
    with pytest.warns(NumericalWarning), log.capture("test"):
        ExactDistance(max_iter=5)(x, y)
    messages = log.messages()
    assert messages[0] == "A is nearly singular [×3, first at transform step 0]"
    assert len(messages) == 2
    assert messages[1].startswith("exact: the OT solver did not converge in 1 of 1 subproblem(s)")
    assert "numItermax" in messages[1] and messages[1].endswith("[first at test]")
    restored = WarningLog()
    restored.load_state_dict(log.state_dict())
    assert restored.messages() == log.messages()


def _stopping_analysis(eval_distance):
    """A small analysis whose cond(A) check (threshold 1 + 1e-9) stops the transform at its first check."""
    from tta.modules import FeaturePair, TaskPairDataModule, TaskTransferAnalysis

    s_tr, s_te, t_tr, t_te = make_pair(seed=5, d=4, k_s=3, k_t=3, n_per_class=40)
    features = FeaturePair(s_tr, s_te, t_tr, t_te, ["a", "b", "c"], ["x", "y", "z"])
    head = HeadConfig(tau=0.2, steps=10, batch_size=64)
    model = TaskTransferAnalysis(
        backbone=None,
        source_head=head,
        probe=head,
        standard_probe=head,
        transform=TransformConfig(steps=6, batch_size=60, select_every=3, max_condition=1.0 + 1e-9),
        distance="exact",
        eval_distance=eval_distance,
        seed=0,
    )
    return model, TaskPairDataModule.from_features(features)


def test_solver_non_convergence_reaches_the_result(tmp_path):
    # the test-time solver stops before optimality
    model, data = _stopping_analysis(ExactDistance(max_iter=3))
    trainer = quiet_trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
    result = model.result.to_dict()
    assert result["details"]["stopped_ill_conditioned_at"] == 2  # the first check after a step
    assert result["details"]["cond_A_at_stop"] > 1.0
    assert result["timings"]["transform_stopped_at"] == 3.0
    joined = "\n".join(result["warnings"])
    assert "exceeds transform.max_condition" in joined and "first at transform step 2" in joined
    assert "did not converge" in joined and "first at test" in joined
    torch.testing.assert_close(model.transform.matrix.detach(), torch.eye(4))
    assert result["determinism"]["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()

    from rich.console import Console

    console = Console(width=400, record=True)
    from tta.results import format_result

    console.print(format_result(model.result))
    text = console.export_text()
    assert "warning" in text and "did not converge" in text and "cond(A)" in text


def test_condition_stop_survives_a_checkpoint(tmp_path):
    """`tta test` from a checkpoint reports the cond(A) stop of the fit (the guard's state travels)."""
    model, data = _stopping_analysis("exact")
    trainer = quiet_trainer(tmp_path, enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
        (ckpt,) = sorted(tmp_path.rglob("*.ckpt"))
        again, _ = _stopping_analysis("exact")
        quiet_trainer(tmp_path).test(again, datamodule=data, ckpt_path=str(ckpt), verbose=False)
    assert model.result.to_dict()["details"]["stopped_ill_conditioned_at"] == 2
    for key in ("stopped_ill_conditioned_at", "cond_A_at_stop", "max_condition"):
        assert again.result.to_dict()["details"][key] == model.result.to_dict()["details"][key], key
    assert again.ill_conditioned_at == 2
    assert again.result.to_dict()["bound"] == model.result.to_dict()["bound"]
    assert any("max_condition" in m for m in again.result.to_dict()["warnings"])
