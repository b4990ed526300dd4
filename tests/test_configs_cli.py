"""The configs ship inside the package: ``tta configs list|show|path``, ``--config NAME`` (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tta.cli import main
from tta.cli._configs import bundled_configs, config_root, resolve_config, resolve_config_args

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_configs_are_the_shipped_ones():
    assert (ROOT / "configs").resolve() == config_root().resolve()
    names = bundled_configs()
    assert {"demo", "benchmarks/offline", "small_cnn/train_fashion_mnist", "trainer/cpu"} <= set(names)
    assert len(names) == len(list((ROOT / "configs").rglob("*.yaml")))


def test_list_show_and_path(capsys):
    main(["configs", "list"])
    out = capsys.readouterr().out
    assert "demo  " in out and "Offline demo: how well do ImageNet EfficientNet-Lite0 features" in out
    main(["configs", "show", "demo"])
    assert capsys.readouterr().out == (ROOT / "configs" / "demo.yaml").read_text()
    main(["configs", "path", "benchmarks/offline"])
    assert (
        Path(capsys.readouterr().out.strip()).resolve()
        == (ROOT / "configs/benchmarks/offline.yaml").resolve()
    )
    with pytest.raises(SystemExit) as info:
        main(["configs", "show", "dmeo"])
    assert info.value.code == 2
    assert "tta: error: no shipped config named 'dmeo'; did you mean demo?" in capsys.readouterr().err


def test_config_names_resolve_and_a_local_file_wins(tmp_path, monkeypatch):
    demo = str(bundled_configs()["demo"])
    assert resolve_config("demo") == demo
    assert resolve_config("configs/demo.yaml") in ("configs/demo.yaml", demo)  # a file here, or shipped
    assert resolve_config("no_such_config") == "no_such_config"  # left to the command's own error
    monkeypatch.chdir(tmp_path)
    assert resolve_config("configs/demo.yaml") == demo
    (tmp_path / "demo").write_text("trainer: {}\n")
    assert resolve_config("demo") == "demo"
    assert resolve_config_args(["fit", "--config", "benchmarks/offline", "--config=trainer/cpu", "x"]) == [
        "fit",
        "--config",
        str(bundled_configs()["benchmarks/offline"]),
        f"--config={bundled_configs()['trainer/cpu']}",
        "x",
    ]


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_demo_by_name_from_an_empty_folder(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment through a .pth)
    into a new venv, and run ``tta fit --config demo`` in an empty folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tta", src / "tta", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("task_transfer_analysis-*.whl"))
    import zipfile

    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {"tta/configs/demo.yaml", "tta/configs/benchmarks/offline.yaml", "tta/py.typed"} <= shipped
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_tta_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [str(venv / "bin" / "tta"), "configs", "path", "demo"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(Path(site))  # the wheel's copy, not the clone's
    fit = subprocess.run(
        [str(venv / "bin" / "tta"), "fit", "--config", "demo", "--trainer.enable_progress_bar", "false"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert fit.returncode == 0, fit.stderr[-4000:]
    result = json.loads(next((empty / "runs" / "demo").rglob("result.json")).read_text())
    assert result["bound"] < result["trivial_level"] and not result["vacuous"]
    assert sorted(p.name for p in empty.iterdir()) == ["runs"]  # nothing written outside the run folder
