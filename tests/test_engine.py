"""One fit engine: ``tta fit`` (the LightningModule), the one-call Python API and the step-by-step API
give bit-identical heads, transform and bound for a seed."""

import pytest
import torch
from _helpers import quiet_trainer
from test_fit_synthetic import make_pair

from tta.distances import create_distance
from tta.fitting import (
    AnalysisSettings,
    EvalConfig,
    HeadTrainer,
    TransformConfig,
    TransformFitter,
    analyze_features,
    evaluate_bound,
    fit_linear_head,
    initialise_transform,
    learn_transform,
)
from tta.heads import HeadConfig, LinearHead
from tta.modules import FeaturePair, TaskPairDataModule, TaskTransferAnalysis
from tta.results import AnalysisResult
from tta.transforms import TaskTransform

HEAD = HeadConfig(tau=0.2, steps=40, batch_size=128)
STANDARD = HeadConfig(w_gp=0.0, steps=40, weight_decay=1e-4)
TRANSFORM = TransformConfig(steps=30, batch_size=200, select_every=5, select_points=300, patience=2)


def _features() -> FeaturePair:
    s_tr, s_te, t_tr, t_te = make_pair(seed=3)
    return FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])


def _settings() -> AnalysisSettings:
    return AnalysisSettings(HEAD, HEAD, STANDARD, TRANSFORM, EvalConfig(), "exact", "exact")


@pytest.fixture(scope="module")
def lightning_fit(tmp_path_factory):
    features = _features()
    model = TaskTransferAnalysis(
        backbone=None,
        source_head=HEAD,
        probe=HEAD,
        standard_probe=STANDARD,
        transform=TRANSFORM,
        distance="exact",
        eval_distance="exact",
        seed=7,
    )
    data = TaskPairDataModule.from_features(features)
    trainer = quiet_trainer(tmp_path_factory.mktemp("engine"))
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return model, features


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


def test_the_one_call_api_equals_tta_fit_bit_for_bit(lightning_fit):
    model, features = lightning_fit
    analysis, result = analyze_features(features, _settings(), seed=7)
    for name in ("source_head", "probe", "standard_probe", "transform"):
        _assert_identical(getattr(model, name), getattr(analysis, name))
    assert isinstance(result, AnalysisResult)
    assert result.bound == model.result.bound
    assert result.report.terms == model.result.report.terms
    assert result.probe.target_acc == model.result.probe.target_acc
    assert result.timings["selected_step"] == model.timings["selected_step"]
    assert result.timings.get("transform_stopped_at") == model.timings.get("transform_stopped_at")


def test_the_step_by_step_api_equals_tta_fit_bit_for_bit(lightning_fit):
    model, features = lightning_fit
    (zs, ys), (zt, yt) = features.source_train, features.target_train
    k_s, k_t = features.num_source_classes, features.num_target_classes
    head = fit_linear_head(zs, ys, k_s, HEAD, seed=7)
    probe = fit_linear_head(zt, yt, k_t, HEAD, seed=8)
    standard = fit_linear_head(zt, yt, k_t, STANDARD, seed=9)
    transform = TaskTransform(k_s, k_t, features.feature_dim)
    initialise_transform(transform, (zs, ys), (zt, yt), TRANSFORM, seed=7)
    history = learn_transform(
        transform, head, (zs, ys), (zt, yt), create_distance("exact"), TRANSFORM, seed=7
    )
    _assert_identical(model.source_head, head)
    _assert_identical(model.probe, probe)
    _assert_identical(model.standard_probe, standard)
    _assert_identical(model.transform, transform)
    assert len(history) == model.timings.get("transform_stopped_at", TRANSFORM.steps)
    report = evaluate_bound(
        transform, head, features.source_test, features.target_test, create_distance("exact")
    )
    assert report.bound == model.result.bound


def test_a_resumed_head_trainer_continues_bit_for_bit():
    zs, ys = _features().source_train
    straight = HeadTrainer("h", LinearHead(zs.shape[1], 5), (zs, ys), HEAD, seed=1)
    for i in range(HEAD.steps):
        straight.step(i)
    first = HeadTrainer("h", LinearHead(zs.shape[1], 5), (zs, ys), HEAD, seed=1)
    for i in range(15):
        first.step(i)
    resumed_head = LinearHead(zs.shape[1], 5)
    resumed_head.load_state_dict(first.head.state_dict())
    resumed = HeadTrainer("h", resumed_head, (zs, ys), HEAD, seed=1)
    resumed.load_state_dict(first.state_dict())
    for i in range(15, HEAD.steps):
        resumed.step(i)
    _assert_identical(straight.head, resumed.head)


def test_a_resumed_transform_fitter_continues_bit_for_bit():
    f = _features()
    head = fit_linear_head(*f.source_train, 5, HEAD, seed=0)
    distance = create_distance("exact")

    def fresh() -> TransformFitter:
        t = TaskTransform(5, 4, f.feature_dim)
        initialise_transform(t, f.source_train, f.target_train, TRANSFORM)
        return TransformFitter(t, head, f.source_train, f.target_train, distance, TRANSFORM)

    straight = fresh()
    for i in range(TRANSFORM.steps):
        straight.step(i)
    straight.finish()
    first = fresh()
    for i in range(12):
        first.step(i)
    resumed = fresh()
    resumed.transform.load_state_dict(first.transform.state_dict())
    resumed.load_state_dict(first.state_dict())
    for i in range(12, TRANSFORM.steps):
        resumed.step(i)
    resumed.finish()
    _assert_identical(straight.transform, resumed.transform)
    assert resumed.stopped_at == straight.stopped_at and resumed.selected_step == straight.selected_step


def test_the_result_round_trips_through_its_json_form(lightning_fit):
    import json

    model, _ = lightning_fit
    record = json.loads(json.dumps(model.result.to_dict()))
    assert record["schema_version"] == 2
    again = AnalysisResult.from_dict(record)
    assert again == model.result
    with pytest.raises(ValueError, match="schema version 99"):
        AnalysisResult.from_dict({**record, "schema_version": 99})
    with pytest.raises(ValueError, match="not a tta result record"):
        AnalysisResult.from_dict({"bound": 1.0})


def test_tta_fit_runs_the_logit_variant_and_logs_only_its_terms(tmp_path):
    """``tta fit`` with ``transform.variant: logit``: the test epoch logs the transport (no τ or W₁,
    which that variant does not have) and the result equals the one-call API's bit for bit."""
    from dataclasses import replace

    features = _features()
    settings = _settings().with_variant("logit")
    model = TaskTransferAnalysis(
        backbone=None,
        source_head=settings.source_head,
        probe=HEAD,
        standard_probe=STANDARD,
        transform=replace(TRANSFORM, variant="logit"),
        distance="exact",
        eval_distance="exact",
        seed=7,
    )
    data = TaskPairDataModule.from_features(features)
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    logged = trainer.callback_metrics
    assert "test/transport" in logged and "test/tau" not in logged and "test/w1" not in logged
    assert model.result.report.variant == "logit" and model.result.report.tau is None
    assert float(logged["test/bound"]) == pytest.approx(model.result.bound, rel=1e-6)
    assert model.result.bound >= model.result.transformed_classifier.target_ce
    _, again = analyze_features(features, settings, seed=7)
    assert again.bound == model.result.bound
