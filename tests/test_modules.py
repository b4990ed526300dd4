"""The LightningModules on precomputed synthetic features (no backbone): fit, test, checkpoint reload."""

import pytest
import torch
from _helpers import quiet_trainer
from test_fit_synthetic import make_pair

from tta.fitting import TransformConfig
from tta.heads import HeadConfig
from tta.modules import FeaturePair, LinearProbe, TaskPairDataModule, TaskTransferAnalysis


def _features() -> FeaturePair:
    s_tr, s_te, t_tr, t_te = make_pair(seed=1)
    return FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])


def _model(**transform):
    head = HeadConfig(tau=0.2, steps=60, batch_size=128)
    return TaskTransferAnalysis(
        backbone=None,
        source_head=head,
        probe=head,
        standard_probe=HeadConfig(w_gp=0.0, steps=60, weight_decay=1e-4),
        transform=TransformConfig(steps=25, batch_size=200, **transform),
        distance="exact",
        eval_distance="exact",
        seed=0,
    )


def _trainer(tmp_path, **kw):
    return quiet_trainer(tmp_path, **kw)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modules")
    model, data = _model(), TaskPairDataModule.from_features(_features(), eval_batch_size=50)
    trainer = _trainer(tmp)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return model, data, trainer


def test_fit_runs_every_phase_once(fitted):
    model, _, trainer = fitted
    assert int(model.step_counter) == model.total_steps == 60 * 3 + 25
    assert trainer.global_step == model.total_steps
    assert set(model.timings) >= {"source_head", "probe", "standard_probe", "transform", "evaluation"}


def test_result_is_consistent(fitted):
    result = fitted[0].result.to_dict()
    assert result["bound"] >= result["transformed_classifier"]["target_ce"]
    assert result["probe"]["target_acc"] > 0.9 and result["standard_probe"]["target_acc"] > 0.9
    # torchmetrics over batches of 50 agree with the one-shot pure evaluation
    assert result["transformed_classifier"]["target_ce"] == pytest.approx(
        result["details"]["transformed_target_ce"], rel=1e-5
    )


def test_checkpoint_reload_reproduces_the_test(fitted, tmp_path):
    model, data, trainer = fitted
    ckpt = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not any(k.startswith("backbone.") for k in state)
    fresh = _model()
    _trainer(tmp_path).test(
        fresh, datamodule=TaskPairDataModule.from_features(data.features), ckpt_path=ckpt, verbose=False
    )
    assert fresh.result.to_dict()["bound"] == pytest.approx(model.result.to_dict()["bound"], rel=1e-6)
    assert fresh.result.to_dict()["probe"]["target_ce"] == pytest.approx(
        model.result.to_dict()["probe"]["target_ce"], rel=1e-6
    )


def test_fixed_all_learns_no_transform(tmp_path):
    model = _model(mode="fixed_all")
    data = TaskPairDataModule.from_features(_features())
    _trainer(tmp_path).fit(model, datamodule=data)
    assert model.phase_steps["transform"] == 0
    torch.testing.assert_close(model.transform.matrix.detach(), torch.eye(12))


def test_data_module_without_backbone_or_features_says_how_to_fix(tmp_path):
    model = _model()
    data = TaskPairDataModule(reference=data_spec(), target=data_spec())
    with pytest.raises(ValueError, match="from_features"):
        _trainer(tmp_path).fit(model, datamodule=data)


def data_spec():
    from tta.data import TaskSpec

    return TaskSpec("digits")


def test_linear_probe_standalone(tmp_path):
    probe = LinearProbe(12, 4, HeadConfig(tau=0.2, steps=80, batch_size=128), task="target")
    data = TaskPairDataModule.from_features(_features())
    trainer = _trainer(tmp_path)
    trainer.fit(probe, datamodule=data)
    out = trainer.test(probe, datamodule=data, verbose=False)[0]
    assert out["test/probe_acc"] > 0.9
    assert 0 < out["test/probe_ce"] < 1.4


def test_patience_ends_the_transform_phase_in_the_module(tmp_path):
    """A frozen transform (zero learning rates) never improves: with patience 2 and a score every
    step, steps 0 and 1 are stale and the phase stops at step 2; the fit still ends with the best state."""
    model = _model(select_every=1, patience=2, lr=0.0, lr_prior=0.0, lr_feature_map=0.0)
    data = TaskPairDataModule.from_features(_features(), eval_batch_size=50)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=data)
    assert int(model.step_counter) == model.total_steps  # the remaining steps ran as no-ops
    assert model.timings["transform_stopped_at"] == 2.0
    assert model.timings["selected_step"] == -1.0  # the initial state: nothing beat it
    trainer.test(model, datamodule=data, verbose=False)
    assert torch.isfinite(torch.tensor(model.result.to_dict()["bound"]))


def test_selection_subset_keeps_every_class():
    from tta.fitting import selection_subset

    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 1000, (5000,), generator=generator)
    y[:1000] = torch.arange(1000)  # every class present at least once
    z = torch.randn(5000, 3, generator=generator)
    sz, sy = selection_subset((z, y), 2000, seed=3)
    assert sz.shape == (2000, 3) and set(sy.tolist()) == set(range(1000))
    again = selection_subset((z, y), 2000, seed=3)
    assert torch.equal(again[0], sz) and torch.equal(again[1], sy)  # seeded
    rows = {tuple(r) for r in z.tolist()}
    assert all(tuple(r) in rows for r in sz.tolist())  # rows of the data, with their labels
    small = selection_subset((z, y), 10, seed=0)  # fewer points than classes: one per class
    assert small[0].shape[0] == 1000 and set(small[1].tolist()) == set(range(1000))
