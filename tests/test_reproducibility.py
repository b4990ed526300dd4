"""Same config + same seed ⇒ same bound; the result holds what a rerun needs; `deterministic` is honoured."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from _helpers import quiet_trainer, tta_fit_command
from test_fit_synthetic import make_pair

from tta.fitting import TransformConfig
from tta.heads import HeadConfig
from tta.modules import FeaturePair, TaskPairDataModule, TaskTransferAnalysis

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _restore_determinism():
    """Trainer(deterministic=...) sets torch's process-wide flag: put it back for the other tests."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _features(seed: int = 2) -> FeaturePair:
    s_tr, s_te, t_tr, t_te = make_pair(seed=seed, d=6, k_s=4, k_t=3, n_per_class=50)
    return FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(4)], [f"t{i}" for i in range(3)])


def _fit_and_test(
    tmp_path: Path, features: FeaturePair, deterministic: bool | None = True, seed: int = 0
) -> dict:
    head = HeadConfig(tau=0.2, steps=30, batch_size=64)
    model = TaskTransferAnalysis(
        backbone=None,
        source_head=head,
        probe=head,
        standard_probe=HeadConfig(w_gp=0.0, steps=30, weight_decay=1e-4),
        transform=TransformConfig(steps=12, batch_size=90, select_every=4, select_points=150),
        distance="sinkhorn",  # the GeomLoss path: the one with floating-point reductions
        eval_distance="exact",
        seed=seed,
    )
    trainer = quiet_trainer(tmp_path, enable_checkpointing=False, deterministic=deterministic)
    data = TaskPairDataModule.from_features(features, eval_batch_size=40)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return model.result.to_dict()


def _numbers(result: dict) -> dict[str, float]:
    out = {"bound": result["bound"], **result["terms"]}
    for key in ("transformed_classifier", "probe", "standard_probe"):
        out.update({f"{key}.{k}": v for k, v in result[key].items()})
    return out


def test_same_seed_same_bound_through_the_python_api(tmp_path):
    first = _fit_and_test(tmp_path / "a", _features())
    second = _fit_and_test(tmp_path / "b", _features())
    a, b = _numbers(first), _numbers(second)
    assert set(a) == set(b)
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    assert first["prior"] == pytest.approx(second["prior"], abs=1e-6)
    assert first["data"] == second["data"]
    assert first["determinism"] == {"deterministic_algorithms": True, "warn_only": False}
    # the seed matters: another seed gives another fit (guards against a test that cannot fail)
    other = _fit_and_test(tmp_path / "c", _features(), seed=1)
    assert abs(other["bound"] - first["bound"]) > 1e-6


def test_data_fingerprints_follow_the_data(tmp_path):
    base = _features().summary()
    changed = _features()
    z, y = changed.target_test
    z = z.clone()
    z[0, 0] += 1e-3
    changed.target_test = (z, y)
    after = changed.summary()
    for split in ("source_train", "source_test", "target_train", "target_test"):
        assert len(base[split]["fingerprint"]) == 16 and base[split]["n"] > 0
        assert (after[split]["fingerprint"] == base[split]["fingerprint"]) is (split != "target_test"), split
    relabelled = _features()
    z, y = relabelled.source_train
    relabelled.source_train = (z, y.roll(1))  # same features, other labels
    assert relabelled.summary()["source_train"]["fingerprint"] != base["source_train"]["fingerprint"]


def test_deterministic_false_is_recorded(tmp_path):
    result = _fit_and_test(tmp_path, _features(), deterministic=False)
    assert result["determinism"]["deterministic_algorithms"] is False
    # on CPU tta's kernels are deterministic anyway: the same bound as a deterministic run
    reference = _fit_and_test(tmp_path / "det", _features(), deterministic=True)
    assert abs(result["bound"] - reference["bound"]) <= 1e-6


# ------------------------------------------------------------------------------------------ `tta fit`


def _tta_fit(work: Path, name: str, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TTA_CACHE_DIR": str(work / "cache")}
    cmd = tta_fit_command(
        TINY,
        work / name,
        work / "cache",
        *("--trainer.enable_checkpointing", "false", "--model.transform.steps", 4),
        *extra,
    )
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (path,) = sorted((work / name).rglob("result.json"))
    return json.loads(path.read_text()), proc


@pytest.mark.slow
def test_tta_fit_twice_gives_the_same_bound_and_a_complete_record(tmp_path):
    first, proc = _tta_fit(tmp_path, "one")
    second, _ = _tta_fit(tmp_path, "two")
    assert abs(first["bound"] - second["bound"]) <= 1e-6
    for key, value in _numbers(first).items():
        assert abs(value - _numbers(second)[key]) <= 1e-6, key
    assert first["config_hash"] == second["config_hash"]
    # what a rerun needs: the full config, the seeds, the versions, the data fingerprints
    config = first["config"]
    assert config["seed_everything"] == 0 and config["model"]["seed"] == 0 and first["seed"] == 0
    assert config["trainer"]["deterministic"] is True
    assert config["data"]["reference"]["dataset"] == "fashion_mnist"
    assert config["model"]["transform"]["steps"] == 4  # command-line overrides land in the record
    for package in ("python", "task-transfer-analysis", "torch", "lightning", "pot", "geomloss"):
        assert first["versions"][package], package
    for split in ("source_train", "source_test", "target_train", "target_test"):
        assert len(first["data"][split]["fingerprint"]) == 16
    assert first["data"] == {**second["data"], "cache_hits": first["data"]["cache_hits"]}
    assert all(second["data"]["cache_hits"].values())  # the second run read the cached features
    assert first["determinism"]["deterministic_algorithms"] is True  # the CLI default
    assert isinstance(first["warnings"], list)
    assert "cond(A)" in proc.stdout  # the printed table shows the numerical health too
    assert first["details"]["stopped_ill_conditioned_at"] is None and first["details"]["cond_A"] >= 1.0
    # `--trainer.deterministic false` is honoured: torch's flag is off inside the run, and recorded
    loose, _ = _tta_fit(tmp_path, "three", "--trainer.deterministic", "false")
    assert loose["determinism"]["deterministic_algorithms"] is False
    assert loose["config"]["trainer"]["deterministic"] is False
    assert loose["config_hash"] == first["config_hash"]  # the hash covers model, data and seed only
    assert abs(loose["bound"] - first["bound"]) <= 1e-6  # CPU: the same numbers either way
