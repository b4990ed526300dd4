"""SIGINT/SIGTERM stop a fit or a benchmark cleanly, and a rerun resumes to the same result.

In-process tests (synthetic features, fast): the process sends itself a real signal at a chosen step and
the resumed fit must end bit-identical to an uninterrupted one. End-to-end tests (``slow``): ``tta fit``
and ``tta benchmark`` subprocesses killed from the outside, and feature extraction killed (SIGKILL) at the
worst moments of a cache write.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from _helpers import quiet_trainer, tta_fit_command
from test_fit_synthetic import make_pair

from tta.errors import TTAInterrupted
from tta.fitting import TransformConfig
from tta.heads import HeadConfig
from tta.modules import FeaturePair, TaskPairDataModule, TaskTransferAnalysis
from tta.modules._interrupt import InterruptCallback, Interrupted, SignalGuard, active_guard

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "tiny.yaml"

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    # resuming into the folder of the interrupted fit, and without its callbacks, is what these tests do
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
    # the analysis ignores its batches' content: restarting the loader mid-epoch changes nothing
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
]


# ------------------------------------------------------------------------------------------ in process
def _features() -> FeaturePair:
    s_tr, s_te, t_tr, t_te = make_pair(seed=3)
    return FeaturePair(s_tr, s_te, t_tr, t_te, [f"s{i}" for i in range(5)], [f"t{i}" for i in range(4)])


def _model(**transform) -> TaskTransferAnalysis:
    head = HeadConfig(tau=0.2, steps=15, batch_size=64)
    return TaskTransferAnalysis(
        backbone=None,
        source_head=head,
        probe=head,
        standard_probe=HeadConfig(w_gp=0.0, steps=15, weight_decay=1e-4),
        transform=TransformConfig(**{"steps": 20, "batch_size": 100, "select_every": 4, **transform}),
        distance="exact",
        eval_distance="exact",
        seed=5,
    )


class SignalAtStep(pl.Callback):
    """Sends this process ``signum`` when training step ``step`` starts (``step_counter == step``)."""

    def __init__(self, step: int, signum: int, times: int = 1):
        self.step, self.signum, self.times = step, signum, times

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if int(pl_module.step_counter) == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def _fit(tmp, model, callbacks=(), ckpt_path=None) -> pl.Trainer:
    trainer = quiet_trainer(tmp, num_sanity_val_steps=0, deterministic=True, callbacks=list(callbacks))
    trainer.fit(
        model,
        datamodule=TaskPairDataModule.from_features(_features(), eval_batch_size=50),
        ckpt_path=ckpt_path,
    )
    return trainer


def _fit_and_test(tmp, model, callbacks=(), ckpt_path=None) -> dict:
    trainer = _fit(tmp, model, callbacks, ckpt_path)
    trainer.test(model, datamodule=trainer.datamodule, verbose=False)
    return model.result.to_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted fit (transform steps with best-state selection) and its result."""
    model = _model()
    result = _fit_and_test(tmp_path_factory.mktemp("ref"), model)
    return model, result


def _assert_same_fit(model, result, ref_model, ref_result):
    assert result["bound"] == ref_result["bound"]  # bit-identical, not only to 1e-6
    assert result["prior"] == ref_result["prior"]
    assert result["label_map"] == ref_result["label_map"]
    assert result["probe"] == ref_result["probe"]
    assert result["standard_probe"] == ref_result["standard_probe"]
    for key in ("selected_step", "transform_stopped_at"):
        assert result["timings"].get(key) == ref_result["timings"].get(key), key
    state, ref_state = model.state_dict(), ref_model.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    ("signum", "step"),
    [(signal.SIGTERM, 37), (signal.SIGINT, 3), (signal.SIGTERM, 15 * 3)],
    ids=["sigterm-transform", "sigint-source-head", "sigterm-first-transform-step"],
)
def test_signal_stops_at_a_step_boundary_and_resume_is_exact(tmp_path, reference, signum, step):
    ref_model, ref_result = reference
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    model = _model()
    callback = InterruptCallback(save_every_s=None, resume_record=str(tmp_path / "record.json"))
    with pytest.raises(TTAInterrupted) as info:
        _fit(tmp_path, model, [callback, SignalAtStep(step, signum)])
    name = signal.Signals(signum).name
    message = str(info.value)
    assert message.startswith(f"interrupted by {name} at step {step + 1}/{model.total_steps} (")
    assert "rerun the same command to resume" in message and "\n" not in message
    ckpt = callback.checkpoint_path
    assert ckpt is not None and ckpt.is_file() and str(ckpt) in message
    assert not list(ckpt.parent.glob("*.tmp")) and not list(ckpt.parent.glob(".*.tmp"))
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]  # no epoch-end checkpoint
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert active_guard() is None
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == name
    assert record["step"] == record["saved_step"] == step + 1 and record["checkpoint"] == str(ckpt.resolve())

    resumed = _model()
    result = _fit_and_test(tmp_path, resumed, [InterruptCallback(save_every_s=None)], ckpt_path=str(ckpt))
    assert int(resumed.step_counter) == resumed.total_steps
    _assert_same_fit(resumed, result, ref_model, ref_result)
    assert not ckpt.exists()  # the mid-fit checkpoint is gone once the fit completed


def test_a_signal_in_the_last_step_keeps_the_fitted_model(tmp_path, reference):
    """Interrupted during the last training step, the rerun has no step left to run, so no epoch-end
    checkpoint is written: the interrupt checkpoint (the complete fit) must be kept (issue 16, item 4)."""
    ref_model, ref_result = reference
    model = _model()
    callback = InterruptCallback(save_every_s=None)
    with pytest.raises(TTAInterrupted, match=rf"at step {model.total_steps}/{model.total_steps} "):
        _fit(tmp_path, model, [callback, SignalAtStep(model.total_steps - 1, signal.SIGINT)])
    ckpt = callback.checkpoint_path
    resumed = _model()
    again = InterruptCallback(save_every_s=None)
    result = _fit_and_test(tmp_path, resumed, [again], ckpt_path=str(ckpt))
    _assert_same_fit(resumed, result, ref_model, ref_result)
    kept = again.checkpoint_path
    assert kept is not None and kept.is_file()
    reloaded = torch.load(kept, map_location="cpu", weights_only=True)
    assert int(reloaded["state_dict"]["step_counter"]) == resumed.total_steps


def test_resume_keeps_the_early_stop_of_patience(tmp_path):
    """transform.patience stops the transform phase early (timings["transform_stopped_at"]); a fit
    interrupted after that point reports the same stop when resumed."""
    kw = {"select_every": 1, "patience": 2, "lr": 0.0, "lr_prior": 0.0, "lr_feature_map": 0.0}
    ref = _model(**kw)
    ref_result = _fit_and_test(tmp_path / "ref", ref)
    assert ref_result["timings"]["transform_stopped_at"] == 2.0
    model = _model(**kw)
    callback = InterruptCallback(save_every_s=None)
    with pytest.raises(TTAInterrupted):
        _fit(tmp_path / "run", model, [callback, SignalAtStep(15 * 3 + 6, signal.SIGTERM)])
    resumed = _model(**kw)
    result = _fit_and_test(tmp_path / "run", resumed, ckpt_path=str(callback.checkpoint_path))
    _assert_same_fit(resumed, result, ref, ref_result)


def test_resume_keeps_the_condition_guard(tmp_path):
    """Without best-state selection, cond(A) is checked on the initial state and after the last step;
    cond(A) grows from 1 to 1.2 over the 20 steps, so with transform.max_condition 1.15 the last check
    fails and restores the last well-conditioned state: the initial one. A fit interrupted after step 9
    must restore that state too, not the one it resumed from."""
    kw = {"select_every": 0, "max_condition": 1.15}
    ref = _model(**kw)
    with pytest.warns(UserWarning, match="max_condition"):
        ref_result = _fit_and_test(tmp_path / "ref", ref)
    assert int(ref.ill_conditioned_at) == 19
    model = _model(**kw)
    callback = InterruptCallback(save_every_s=None)
    with pytest.raises(TTAInterrupted):
        _fit(tmp_path / "run", model, [callback, SignalAtStep(15 * 3 + 9, signal.SIGTERM)])
    resumed = _model(**kw)
    with pytest.warns(UserWarning, match="max_condition"):
        result = _fit_and_test(tmp_path / "run", resumed, ckpt_path=str(callback.checkpoint_path))
    assert int(resumed.ill_conditioned_at) == 19
    _assert_same_fit(resumed, result, ref, ref_result)


def test_periodic_checkpoint_is_enough_after_a_hard_stop(tmp_path, reference):
    """A second SIGINT stops at once, without saving; the last periodic checkpoint resumes exactly."""
    ref_model, ref_result = reference
    model = _model()
    callback = InterruptCallback(save_every_s=None, save_every_n_steps=10)
    with pytest.raises(Interrupted) as info:
        _fit(tmp_path, model, [callback, SignalAtStep(53, signal.SIGINT, times=2)])
    assert info.value.hard and info.value.signal_name == "SIGINT"
    assert callback.saved_step == 50 and callback.checkpoint_path.is_file()
    resumed = _model()
    result = _fit_and_test(tmp_path, resumed, ckpt_path=str(callback.checkpoint_path))
    _assert_same_fit(resumed, result, ref_model, ref_result)


def test_signal_guard_defers_then_stops():
    before = signal.getsignal(signal.SIGTERM)
    with SignalGuard() as guard:
        assert active_guard() is guard and guard.installed
        with pytest.raises(Interrupted) as info:  # outside a step: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert not info.value.hard and info.value.signal_name == "SIGTERM"
        guard.deferred = True
        os.kill(os.getpid(), signal.SIGTERM)  # inside a step: only recorded
        assert guard.received == "SIGTERM"
        with pytest.raises(Interrupted) as info:  # the second one stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert info.value.hard and info.value.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is before and active_guard() is None


def test_guard_outside_the_main_thread_does_nothing():
    seen = {}

    def work():
        with SignalGuard() as guard:
            seen["installed"] = guard.installed

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"installed": False}


def test_callback_options_are_checked():
    with pytest.raises(ValueError, match="save_every_s"):
        InterruptCallback(save_every_s=0)
    with pytest.raises(ValueError, match="save_every_n_steps"):
        InterruptCallback(save_every_n_steps=-1)


# ------------------------------------------------------------------------------------------ benchmark
def test_benchmark_stops_between_pairs_and_resumes(tmp_path, monkeypatch, capsys):
    """A real SIGTERM during pair 2 of 3: pair 1 stays stored, exit code 130 with the count; the rerun
    reuses pair 1 and computes the other two."""
    import tta.benchmark._runner as runner
    from tta.benchmark import load_config
    from tta.cli import main

    config_path = ROOT / "tests" / "conf" / "benchmark_tiny.yaml"
    pairs = load_config(config_path).pairs
    out = tmp_path / "bench"
    calls: list[str] = []
    stop_at = {pairs[1].label}

    def fake_run_pair(pair, config, estimators, features=None, relabel=None):
        calls.append(pair.label)
        if pair.label in stop_at:
            stop_at.clear()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            raise AssertionError("the signal did not stop the pair")
        value = float(len(calls))
        record = {
            "record_version": runner.RECORD_VERSION,
            "status": "done",
            "backbone": pair.backbone_name,
            "reference": pair.reference_name,
            "target": pair.target_name,
            "bound": value,
            "terms": {},
            "ground_truth": {"probe_ce": value, "probe_acc": 1 / value},
            "estimators": {},
            "timings": {},
        }
        split = (torch.zeros(4, 2), torch.arange(4) % 2)
        return record, FeaturePair(split, split, split, split, ["a", "b"], ["a", "b"]), None

    monkeypatch.setattr(runner, "run_pair", fake_run_pair)
    monkeypatch.setattr(runner, "estimator_names", lambda selected=None: [])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    args = ["benchmark", "--config", str(config_path), "--output", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"tta: error: interrupted by SIGTERM during pair 2/3 ({pairs[1].label}); 1 of 3 pairs"
    )
    assert "rerun the same command to resume" in err
    stored = sorted((out / "pairs").iterdir())
    assert len(stored) == 1 and json.loads(stored[0].read_text())["bound"] == 1.0
    assert not (out / "report.md").exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers and active_guard() is None

    config = load_config(config_path)
    config.output_dir = str(out)
    run = runner.run_benchmark(config, progress=False)
    assert len(run.resumed) == 1 and len(run.computed) == 2 and not run.failed
    assert calls == [pairs[0].label, pairs[1].label, pairs[1].label, pairs[2].label]
    assert [r["label"] for r in run.records] == [p.label for p in pairs]
    assert run.records[0]["bound"] == 1.0  # read back, not recomputed


# ------------------------------------------------------------------------------------------ end to end
def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


FIT_OVERRIDES = """
trainer:
  callbacks:
    - class_path: tta.modules.InterruptCallback
      init_args: {save_every_n_steps: 5}
model:
  transform: {mode: learned_all, steps: 30, batch_size: 60}
"""


def _fit_cmd(work: Path, root: str, *extra: str) -> list[str]:
    return tta_fit_command([TINY, work / "overrides.yaml"], work / root, work / "cache", *extra)


def _record(work: Path, root: str) -> dict:
    records = list((work / root / ".tta-resume").glob("*.json"))
    try:
        return json.loads(records[0].read_text()) if records else {}
    except ValueError:  # not possible with atomic writes, but do not fail the poll on it
        return {}


def _interrupt_fit(work: Path, root: str, signum: int) -> subprocess.CompletedProcess:
    """Start ``tta fit``, wait until its resume record says it is in the transform phase, signal it."""
    proc = subprocess.Popen(
        _fit_cmd(work, root), cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if _record(work, root).get("phase") == "transform":
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("interrupt_cli")
    (work / "overrides.yaml").write_text(FIT_OVERRIDES)
    from tta.cli import main

    with mock.patch.object(sys, "argv", ["tta"]):  # in this process: saves a start-up; same numbers
        main(_fit_cmd(work, "ref")[3:])
    assert not (work / "ref" / ".tta-resume").exists()  # a completed run leaves no resume record
    return work, json.loads(next((work / "ref").rglob("result.json")).read_text())


def _result(work: Path, root: str) -> dict:
    results = list((work / root).rglob("result.json"))
    assert len(results) == 1, results
    return json.loads(results[0].read_text())


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tta_fit_interrupted_then_resumed(fit_runs, signum):
    work, ref = fit_runs
    root = f"run_{signal.Signals(signum).name}"
    proc = _interrupt_fit(work, root, signum)
    assert proc.returncode == 130, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert line.startswith(f"tta: error: interrupted by {name} at step "), line
    assert "(transform)" in line and "rerun the same command to resume" in line
    record = _record(work, root)
    ckpt = Path(record["checkpoint"])
    assert record["status"] == "interrupted" and ckpt.is_file() and str(ckpt) in line
    assert 60 < record["saved_step"] < 90  # in the transform phase (60 head steps, 30 transform steps)
    assert not list((work / root).rglob("result.json"))  # nothing claims completion
    assert not list((work / root).rglob("epoch=*.ckpt"))

    # SIGTERM: rerun the same command; SIGINT: the same command plus --ckpt_path last
    extra = ("--ckpt_path", "last") if signum == signal.SIGINT else ()
    rerun = subprocess.run(
        _fit_cmd(work, root, *extra), cwd=work, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"tta: resuming from {ckpt} (step {record['saved_step']}/90, transform)" in rerun.stderr
    result = _result(work, root)
    assert result["resumed_from"] == str(ckpt)
    assert result["bound"] == pytest.approx(ref["bound"], abs=1e-6)
    assert result["bound"] == ref["bound"]  # in fact bit-identical
    assert result["prior"] == pytest.approx(ref["prior"], abs=1e-6)
    assert torch.allclose(torch.tensor(result["label_map"]), torch.tensor(ref["label_map"]), atol=1e-6)
    assert (
        result["probe"] == ref["probe"]
        and result["timings"]["selected_step"] == ref["timings"]["selected_step"]
    )
    assert len(list((work / root / "lightning_logs").iterdir())) == 1  # the same log directory
    assert not ckpt.exists() and not (work / root / ".tta-resume").exists()


@pytest.mark.slow
def test_tta_fit_interrupted_during_extraction(fit_runs):
    """SIGTERM while the features are being extracted: exit 130, and no cache entry looks complete; each
    complete entry equals the uninterrupted extraction's."""
    from tta.data import FeatureCache

    work, _ = fit_runs
    cache = work / "cache_x"
    # the progress bar on: the data module reports each cache hit/miss on stderr
    cmd = [
        *_fit_cmd(work, "extract"),
        "--data.cache_dir",
        str(cache),
        "--trainer.enable_progress_bar",
        "true",
    ]
    proc = subprocess.Popen(
        cmd, cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in proc.stderr:  # the first cache miss is printed just before its extraction starts
        lines.append(line)
        if "feature cache miss" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    last = (lines + rest.splitlines())[-1] if rest.strip() else lines[-1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted by SIGTERM" in last and "before training started" in last, last
    logs = work / "extract" / "lightning_logs"  # no empty version folder is left behind (issue 16, item 9)
    assert not logs.exists() or all(any(p.is_file() for p in v.rglob("*")) for v in logs.iterdir())
    reference = FeatureCache(work / "cache")
    for entry in FeatureCache(cache).scan():
        assert entry.status in ("ok", "partial"), entry
        if entry.status == "ok":
            features, labels = FeatureCache(cache).load(entry.key)
            ref = reference.load(entry.key)
            assert ref is not None and torch.equal(features, ref[0]) and torch.equal(labels, ref[1])


KILL_DURING_SAVE = r"""
import os, signal, sys
import tta.data._cache as cache_module
from tta.backbones import create_backbone
from tta.data import TaskSpec
from tta.data import FeatureCache
from tta.data import get_features

real_replace = os.replace

def replace_then_kill(point):
    def replace(src, dst):
        is_data = str(dst).endswith(".safetensors")
        if point == "before_data_rename" and is_data:  # the data file is written, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if point == "before_manifest" and is_data:  # the data file is in place, its manifest not written
            os.kill(os.getpid(), signal.SIGKILL)
    return replace

backbone = create_backbone("efficientnet_lite0", image_size=32)
spec = TaskSpec("digits", classes=[0, 1], train_per_class=12, test_per_class=6)
for point in sys.argv[2:]:
    pid = os.fork()  # one extraction per kill point, without paying the start-up again
    if pid == 0:
        cache_module.os.replace = replace_then_kill(point)
        get_features(backbone, spec, "train", FeatureCache(os.path.join(sys.argv[1], point)), batch_size=32,
                     progress=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(point, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""

POINTS = ("before_data_rename", "before_manifest")


@pytest.mark.slow
def test_extraction_killed_while_writing_the_cache_entry(tmp_path):
    """SIGKILL at the two moments of a cache write where files exist but the entry is not complete: the
    next run finds no entry that looks complete, rebuilds it (with a warning where a data file was left),
    and gets exactly the features of an uninterrupted extraction."""
    import warnings

    from tta.backbones import create_backbone
    from tta.data import FeatureCache, TaskSpec, get_features

    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path), *POINTS],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [w for p in POINTS for w in (p, str(int(signal.SIGKILL)))], proc.stdout
    backbone = create_backbone("efficientnet_lite0", image_size=32)
    spec = TaskSpec("digits", classes=[0, 1], train_per_class=12, test_per_class=6)
    fresh = get_features(backbone, spec, "train", None, batch_size=32, progress=False)
    for point in POINTS:
        cache = FeatureCache(tmp_path / point)
        entries = cache.scan()
        assert entries and all(e.status == "partial" for e in entries), (point, entries)
        key = cache.key(backbone.cache_key(), spec, "train")
        assert cache.verify(key) is not None  # never "sound"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rebuilt = get_features(backbone, spec, "train", cache, batch_size=32, progress=False)
        assert not rebuilt.cache_hit
        rebuild_warnings = [w for w in caught if "corrupt or partial" in str(w.message)]
        assert len(rebuild_warnings) == (1 if point == "before_manifest" else 0), point
        assert cache.verify(key) is None
        assert torch.equal(rebuilt.features, fresh.features) and torch.equal(rebuilt.labels, fresh.labels)
