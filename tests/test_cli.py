"""`tta fit` / `tta test` end to end on a tiny config: real backbone, real datasets, a few steps."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "tiny.yaml"

RESULT_FIELDS = {
    "bound",
    "terms",
    "transformed_classifier",
    "probe",
    "standard_probe",
    "gap",
    "seed",
    "versions",
    "config_hash",
    "timings",
    "details",
    "config",
    "checkpoint",
}
TERM_FIELDS = {"weighted_source_loss", "conditional_entropy", "tau_w1", "tau", "w1"}
TIMING_FIELDS = {"features", "source_head", "probe", "standard_probe", "transform", "evaluation", "total"}


def run_tta(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "tta.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


class _Payload:
    """Unpickling this runs ``open(path, "w")``: a stand-in for a malicious checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    proc = run_tta(
        "fit",
        "--config",
        str(TINY),
        "--trainer.default_root_dir",
        str(work / "runs"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = sorted((work / "runs").rglob("result.json"))
    assert len(results) == 1, results
    return work, proc, json.loads(results[0].read_text()), results[0]


def test_fit_writes_a_complete_result(fitted_run):
    _, proc, result, path = fitted_run
    assert RESULT_FIELDS <= set(result)
    assert TERM_FIELDS <= set(result["terms"])
    assert TIMING_FIELDS <= set(result["timings"])
    t = result["terms"]
    assert result["bound"] == pytest.approx(
        t["weighted_source_loss"] + t["conditional_entropy"] + t["tau_w1"], rel=1e-9
    )
    assert t["tau_w1"] == pytest.approx(t["tau"] * t["w1"], rel=1e-9)
    assert result["gap"] == pytest.approx(result["bound"] - result["probe"]["target_ce"], rel=1e-9)
    for key in ("transformed_classifier", "probe", "standard_probe"):
        assert 0.0 <= result[key]["target_acc"] <= 1.0 and result[key]["target_ce"] > 0
    assert result["versions"]["torch"] and result["versions"]["lightning"]
    try:  # installed plugin distributions are recorded too
        plugin_version = importlib.metadata.version("tta-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        plugin_version = None
    if plugin_version is not None:
        assert result["versions"]["plugin:tta-example-plugin"] == plugin_version
    assert len(result["config_hash"]) == 16 and result["seed"] == 0
    assert "bound (sum)" in proc.stdout and "result written to" in proc.stdout
    assert (path.parent / "config.yaml").exists()  # LightningCLI saves the config per run


def test_the_bound_covers_the_transformed_classifier(fitted_run):
    result = fitted_run[2]
    assert result["bound"] >= result["transformed_classifier"]["target_ce"]


def test_module_metrics_agree_with_the_pure_evaluation(fitted_run):
    result = fitted_run[2]
    # torchmetrics (batched, in the LightningModule) vs tta.fitting.evaluate_bound (pure torch)
    assert result["transformed_classifier"]["target_ce"] == pytest.approx(
        result["details"]["transformed_target_ce"], rel=1e-5
    )
    assert result["transformed_classifier"]["target_acc"] == pytest.approx(
        result["details"]["transformed_target_acc"], abs=1e-6
    )


def test_second_run_reuses_the_feature_cache(fitted_run):
    work, _, result, _ = fitted_run
    assert not any(result["data"]["cache_hits"].values())
    proc = run_tta(
        "fit",
        "--config",
        str(TINY),
        "--trainer.default_root_dir",
        str(work / "runs2"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(next((work / "runs2").rglob("result.json")).read_text())
    assert all(second["data"]["cache_hits"].values())
    assert second["bound"] == pytest.approx(result["bound"], abs=1e-6)  # same config + seed: same bound


def test_test_subcommand_reevaluates_a_saved_fit(fitted_run):
    work, _, result, _ = fitted_run
    ckpt = result["checkpoint"]
    assert ckpt and Path(ckpt).exists()
    proc = run_tta(
        "test",
        "--config",
        str(TINY),
        "--ckpt_path",
        ckpt,
        "--trainer.default_root_dir",
        str(work / "runs_test"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    retest = json.loads(next((work / "runs_test").rglob("result.json")).read_text())
    assert retest["stage"] == "test"
    assert retest["bound"] == pytest.approx(result["bound"], rel=1e-6)
    assert retest["probe"]["target_ce"] == pytest.approx(result["probe"]["target_ce"], rel=1e-6)


def test_test_subcommand_options_win_over_the_checkpoint(fitted_run):
    """`tta test --ckpt_path` re-evaluates with the given options, not the fit's (issue 16, item 1)."""
    work, _, result, _ = fitted_run
    proc = run_tta(
        "test",
        "--config",
        str(TINY),
        "--ckpt_path",
        result["checkpoint"],
        "--model.evaluation.w_eval",
        "classwise",
        "--model.eval_distance",
        "sinkhorn",
        "--trainer.default_root_dir",
        str(work / "runs_test_options"),
        "--data.cache_dir",
        str(work / "cache"),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    retest = json.loads(next((work / "runs_test_options").rglob("result.json")).read_text())
    assert retest["config"]["model"]["evaluation"]["w_eval"] == "classwise"
    assert retest["config"]["model"]["eval_distance"] == "sinkhorn"
    assert retest["details"]["distance"]["estimator"] == "sinkhorn"
    assert retest["bound"] != pytest.approx(result["bound"], rel=1e-9)
    # the fitted heads are the checkpoint's: the probes are unchanged
    assert retest["probe"]["target_ce"] == pytest.approx(result["probe"]["target_ce"], rel=1e-6)


def test_test_subcommand_refuses_a_checkpoint_of_another_backbone(fitted_run, tmp_path):
    work, _, result, _ = fitted_run
    proc = run_tta(
        "test",
        "--config",
        str(TINY),
        "--ckpt_path",
        result["checkpoint"],
        "--model.backbone",
        "efficientnet_lite1",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        cwd=work,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("tta: error:")]
    assert (
        len(lines) == 1
        and "fitted with backbone 'EfficientNetLite0' but the config gives 'EfficientNetLite1'" in lines[0]
    ), proc.stderr[-2000:]


def test_checkpoints_are_loaded_with_weights_only(fitted_run, tmp_path):
    """A checkpoint holding a pickled object is refused in one line, its payload never run (item 3)."""
    import torch

    work, _, result, _ = fitted_run
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    marker = tmp_path / "payload-ran"
    ckpt["hyper_parameters"]["evil"] = _Payload(str(marker))
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    for sub in ("test", "fit"):
        proc = run_tta(
            sub,
            "--config",
            str(TINY),
            "--ckpt_path",
            str(bad),
            "--trainer.default_root_dir",
            str(tmp_path / f"runs_{sub}"),
            "--data.cache_dir",
            str(work / "cache"),
            cwd=work,
        )
        assert proc.returncode == 2, (sub, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
        assert (
            "holds objects other than tensors and plain values (it needs io.open): not loaded" in proc.stderr
        )
        assert "weights_only=False" not in proc.stderr
        assert not marker.exists()
    good = result["checkpoint"]
    proc = run_tta("test", "--config", str(TINY), "--ckpt_path", good, "--weights_only", "false", cwd=work)
    assert proc.returncode == 2 and "weights_only=True only" in proc.stderr


def test_a_bad_checkpoint_is_one_line(fitted_run, tmp_path):
    """Missing, a folder, empty, truncated, or of another fit (a tensor of another shape): one
    `tta: error:` line each, exit 2, naming what is wrong (issue 16, item 8; were tracebacks)."""
    import torch

    work, _, result, _ = fitted_run
    good = Path(result["checkpoint"])
    empty, cut, other = tmp_path / "empty.ckpt", tmp_path / "cut.ckpt", tmp_path / "other.ckpt"
    empty.write_bytes(b"")
    cut.write_bytes(good.read_bytes()[:4000])
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if k.startswith("analysis.") and v.ndim == 2)
    shape = tuple(ckpt["state_dict"][name].shape)
    ckpt["state_dict"][name] = ckpt["state_dict"][name][:-1]  # as if fitted with one class fewer
    torch.save(ckpt, other)
    fewer = ", ".join(str(n) for n in (shape[0] - 1, *shape[1:]))
    cases = {
        tmp_path / "missing.ckpt": "does not exist: pass the .ckpt file of a fit",
        tmp_path: "is a folder: pass the .ckpt file inside it",
        empty: "cannot be read: it is empty, truncated or not a checkpoint (EOFError)",
        cut: "cannot be read: it is empty, truncated or not a checkpoint",
        other: f"does not fit this model: {name} has shape ({fewer}) in the checkpoint but "
        f"({', '.join(map(str, shape))}) in this model",
    }
    for path, message in cases.items():
        proc = run_tta(
            "test",
            "--config",
            str(TINY),
            "--ckpt_path",
            str(path),
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--data.cache_dir",
            str(work / "cache"),
            cwd=work,
        )
        assert proc.returncode == 2, (path, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("tta: error:")]
        assert len(errors) == 1 and f"checkpoint {path} {message}" in errors[0], (path, proc.stderr[-2000:])


def test_test_without_a_checkpoint_refuses_an_unfitted_model(fitted_run, tmp_path):
    """`tta test` without --ckpt_path used to print a bound of untrained heads (issue 16, item 7)."""
    work = fitted_run[0]
    proc = run_tta(
        "test", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.cache_dir", str(work / "cache"), cwd=work,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("tta: error:")]
    assert len(lines) == 1 and "nothing is fitted: this model has run 0 of its 70 training steps" in lines[0]
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_a_fit_cut_short_is_marked_incomplete(fitted_run, tmp_path):
    work = fitted_run[0]
    proc = run_tta(
        "fit", "--config", str(TINY), "--trainer.max_steps", "10",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.cache_dir", str(work / "cache"),
        cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    notes = [w for w in result["warnings"] if w.startswith("incomplete fit")]
    assert notes and "10 of 70 training steps ran (stopped in the source_head phase" in notes[0]
    assert "incomplete fit" in " ".join(proc.stdout.split())


def test_tensorboard_has_every_term_and_the_figures(fitted_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, _, path = fitted_run
    acc = EventAccumulator(str(path.parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "train/bound",
        "train/w1",
        "train/tau",
        "train/conditional_entropy",
        "train/weighted_source_loss",
        "train/source_head_loss",
        "train/probe_loss",
        "test/bound",
        "test/tau_w1",
        "test/probe_ce",
        "test/transformed_acc",
        "test/standard_probe_acc",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    images = set(acc.Tags()["images"])
    assert {"test/label_map", "test/prior", "test/bound_decomposition"} <= images


def test_print_config_and_help(tmp_path):
    proc = run_tta("fit", "--config", str(TINY), "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "transform:" in proc.stdout and "label_cost" in proc.stdout
    help_text = run_tta("fit", "--model.help", "TaskTransferAnalysis", cwd=tmp_path).stdout
    assert "Wasserstein estimator used while learning" in help_text  # docstrings become --help
    assert "--model.help" in run_tta("fit", "--help", cwd=tmp_path).stdout


def test_version_lists_the_stack(tmp_path):
    out = run_tta("--version", cwd=tmp_path).stdout
    for name in ("torch", "lightning", "timm", "geomloss", "pykeops"):
        assert name in out
