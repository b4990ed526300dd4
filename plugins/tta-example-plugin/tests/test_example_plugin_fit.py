"""`tta fit` end to end with the plugin's backbone, dataset and distance (skipped when not installed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tta_example_plugin", reason="tta-example-plugin is not installed")

from npy_fixtures import make_npy_folder

CONFIG = Path(__file__).resolve().parent / "conf" / "example_fit.yaml"


def _tta(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TTA_TEST_THREADS": "1"}
    env.pop("TTA_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("TTA_PLUGINS", None)
    cmd = [sys.executable, "-m", "tta.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("example_fit")
    reference = make_npy_folder(work / "reference", {"a": 11, "b": 11, "c": 11}, shape=(16, 16, 3), seed=0)
    target = make_npy_folder(work / "target", {"p": 11, "q": 11}, shape=(12, 12), seed=1)
    return work, reference, target


def _result(runs: Path) -> dict:
    results = sorted(runs.rglob("result.json"))
    assert len(results) == 1, results
    return json.loads(results[0].read_text())


@pytest.mark.slow
def test_fit_with_the_plugin_objects_by_name(folders):
    work, reference, target = folders
    proc = _tta(
        "fit",
        "--config",
        str(CONFIG),
        "--data.reference.dataset_kwargs",
        json.dumps({"root": str(reference)}),
        "--data.target.dataset_kwargs",
        json.dumps({"root": str(target)}),
        "--trainer.default_root_dir",
        str(work / "runs_by_name"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = _result(work / "runs_by_name")
    assert math.isfinite(result["bound"])
    terms = result["terms"]
    assert result["bound"] == pytest.approx(
        terms["weighted_source_loss"] + terms["conditional_entropy"] + terms["tau_w1"], rel=1e-9
    )
    config = result["config"]
    assert config["model"]["backbone"] == "torchvision/resnet18"
    assert config["model"]["distance"] == "sliced_wasserstein"
    assert config["data"]["reference"]["dataset"] == config["data"]["target"]["dataset"] == "npy_folder"
    assert result["data"]["feature_dim"] == 512  # resnet18's penultimate width
    assert result["data"]["source_classes"] == ["a", "b", "c"] and result["data"]["target_classes"] == [
        "p",
        "q",
    ]
    assert result["details"]["distance"]["estimator"] == "exact"  # eval_distance


@pytest.mark.slow
def test_fit_with_lightning_class_paths(folders):
    work, reference, target = folders
    backbone = {
        "class_path": "tta_example_plugin.TorchvisionBackbone",
        "init_args": {"arch": "resnet18", "image_size": 32, "init_seed": 1},
    }
    distance = {
        "class_path": "tta_example_plugin.SlicedWassersteinDistance",
        "init_args": {"num_projections": 32, "seed": 3, "resample": True},
    }
    proc = _tta(
        "fit",
        "--config",
        str(CONFIG),
        "--model.backbone",
        json.dumps(backbone),
        "--model.distance",
        json.dumps(distance),
        "--data.reference.dataset",
        "tta-example-plugin:npy_folder",  # the qualified form works wherever a name does
        "--data.reference.dataset_kwargs",
        json.dumps({"root": str(reference)}),
        "--data.target.dataset_kwargs",
        json.dumps({"root": str(target)}),
        "--trainer.default_root_dir",
        str(work / "runs_class_path"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = _result(work / "runs_class_path")
    assert math.isfinite(result["bound"])
    assert result["config"]["model"]["distance"]["init_args"]["num_projections"] == 32
