"""Packaging, configs and the documents a new user reads first.

- ``import tta`` stays light (no Lightning, timm, GeomLoss, KeOps or matplotlib) and fast;
- every YAML config under ``configs/`` parses with the real CLI (``tta fit --config X --print_config``);
- the README names the two commands that must work on a fresh machine, CI runs the test script, the
  changelog has an Unreleased section, the scripts are valid bash and the constraints pin torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("lightning", "pytorch_lightning", "timm", "geomloss", "pykeops", "matplotlib")
IMPORT_BUDGET_S = 1.5
CLI_TOP_LEVEL = {"seed_everything", "trainer", "model", "data", "ckpt_path", "optimizer", "lr_scheduler"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# ---------------------------------------------------------------------------------------------- import tta
_IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    import tta
    elapsed = time.perf_counter() - start
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
    """
)


def _probe_import() -> dict[str, object]:
    code = _IMPORT_PROBE.format(heavy=set(HEAVY_MODULES))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_tta_is_light_and_fast():
    first = _probe_import()
    assert first["heavy"] == [], f"`import tta` imported heavy modules: {first['heavy']}"
    seconds = float(first["seconds"])
    if seconds >= IMPORT_BUDGET_S:  # a cold file cache is not what this measures: try once more
        seconds = min(seconds, float(_probe_import()["seconds"]))
    assert seconds < IMPORT_BUDGET_S, f"`import tta` took {seconds:.2f} s (budget {IMPORT_BUDGET_S} s)"


# ---------------------------------------------------------------------------------------------- configs
BENCHMARK_CONFIGS = ROOT / "configs" / "benchmarks"


def _config_files() -> list[Path]:
    """Every `tta fit` config or fragment (benchmark configs are checked by their own parser below)."""
    return sorted(
        p
        for ext in ("*.yaml", "*.yml")
        for p in (ROOT / "configs").rglob(ext)
        if BENCHMARK_CONFIGS not in p.parents
    )


@pytest.mark.parametrize(
    "config", sorted(BENCHMARK_CONFIGS.glob("*.yaml")), ids=lambda p: f"benchmarks/{p.name}"
)
def test_benchmark_config_parses(config: Path):
    from tta.benchmark import load_config

    parsed = load_config(config)
    assert parsed.pairs, f"{config} defines no pair"


def _class_paths(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [c for v in node.values() for c in _class_paths(v)]
    if isinstance(node, list):
        return [c for v in node for c in _class_paths(v)]
    return []


def _missing_plugin(config: object) -> str | None:
    """The first ``class_path`` whose top-level package is not installed (an optional plugin)."""
    for path in _class_paths(config):
        top = path.split(".")[0]
        if top != "tta" and importlib.util.find_spec(top) is None:
            return path
    return None


# A fragment under configs/<dir>/ (not a whole config) is parsed as the value of this option, on top of
# the demo config; a partial config (no `data` section) is layered on top of the demo config.
FRAGMENT_OPTIONS = {
    "backbone": "--model.backbone",
    "backbones": "--model.backbone",
    "distance": "--model.distance",
    "distances": "--model.distance",
    "transform": "--model.transform",
    "evaluation": "--model.evaluation",
    "data": "--data",
    "trainer": "--trainer",
}


def _cli_args(config: Path) -> list[str] | str:
    """``tta fit`` arguments that parse ``config``, or a reason why it cannot be parsed."""
    raw = yaml.safe_load(config.read_text())
    rel = str(config.relative_to(ROOT))
    if not isinstance(raw, dict):
        return f"{rel} is not a YAML mapping"
    if set(raw) <= CLI_TOP_LEVEL:
        if "data" in raw:
            return ["fit", "--config", rel, "--print_config"]
        return ["fit", "--config", "configs/demo.yaml", "--config", rel, "--print_config"]
    option = FRAGMENT_OPTIONS.get(config.parent.name)
    if option is None:
        return (
            f"{rel}: top-level keys {sorted(set(raw) - CLI_TOP_LEVEL)} are not sections of `tta fit`, and "
            f"its folder is not a known fragment folder ({', '.join(sorted(FRAGMENT_OPTIONS))})"
        )
    return ["fit", "--config", "configs/demo.yaml", option, rel, "--print_config"]


# One interpreter parses every config: the CLI import (Lightning) is paid once.
_PRINT_CONFIG_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback
    from tta.cli import main

    results = {}
    for key, args in json.loads(sys.argv[1]).items():
        out, err = io.StringIO(), io.StringIO()
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            code = 1
            err.write(traceback.format_exc())
        results[key] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-4000:]}
    print("@@RESULTS@@" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def printed_configs() -> dict[str, dict[str, object]]:
    jobs = {}
    for config in _config_files():
        args = _cli_args(config)
        if isinstance(args, list) and _missing_plugin(yaml.safe_load(config.read_text())) is None:
            jobs[str(config.relative_to(ROOT))] = args
    proc = subprocess.run(
        [sys.executable, "-c", _PRINT_CONFIG_DRIVER, json.dumps(jobs)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    marker = proc.stdout.rfind("@@RESULTS@@")
    assert proc.returncode == 0 and marker >= 0, (
        f"config driver failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout[marker + len("@@RESULTS@@") :])


def test_configs_exist():
    assert (ROOT / "configs" / "demo.yaml") in _config_files()


@pytest.mark.parametrize("config", _config_files(), ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_parses_with_the_cli(config: Path, printed_configs):
    args = _cli_args(config)
    assert isinstance(args, list), args
    plugin = _missing_plugin(yaml.safe_load(config.read_text()))
    if plugin is not None:
        pytest.skip(f"{config.name} needs the optional plugin providing {plugin}")
    result = printed_configs[str(config.relative_to(ROOT))]
    assert result["code"] == 0, f"`tta {' '.join(args)}` failed:\n{result['stderr']}"
    resolved = yaml.safe_load(result["stdout"])
    assert isinstance(resolved, dict) and {"model", "data", "trainer"} <= set(resolved)


def test_demo_config_resolves_to_the_offline_demo(printed_configs):
    resolved = yaml.safe_load(printed_configs["configs/demo.yaml"]["stdout"])
    assert resolved["model"]["class_path"] == "tta.TaskTransferAnalysis"  # the default without class_path
    assert resolved["data"]["class_path"] == "tta.TaskPairDataModule"
    data, model = resolved["data"]["init_args"], resolved["model"]["init_args"]
    assert data["reference"]["dataset"] == "fashion_mnist"
    assert data["target"]["dataset"] == "mnist_5k"
    assert model["backbone"]["class_path"] == "tta.backbones.EfficientNetLite0"
    assert resolved["trainer"]["default_root_dir"] == "runs/demo"


# ---------------------------------------------------------------------------------------------- documents
def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme
    assert "bash scripts/test.sh" in readme


def test_ci_runs_the_test_script():
    ci = ROOT / ".ci" / "run"
    text = ci.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*(bash\s+)?(\./)?scripts/test\.sh\b", text, re.MULTILINE), text
    assert os.access(ci, os.X_OK), ".ci/run must be executable"


def test_changelog_has_an_unreleased_section():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[Unreleased\]\s*$", changelog, re.MULTILINE)
    assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)\s*$", changelog, re.MULTILINE)


@pytest.mark.parametrize("script", ["scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh", ".ci/run"])
def test_scripts_are_valid_strict_bash(script: str):
    path = ROOT / script
    text = path.read_text()
    assert "set -euo pipefail" in text
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_test_script_fails_when_no_test_is_collected():
    text = (ROOT / "scripts" / "test.sh").read_text()
    assert "pytest" in text and re.search(r"rc\s*==\s*5", text)


def test_constraints_pin_torch_and_every_direct_dependency():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert pins.get("torch") == "2.14.1"
    assert pins.get("torchvision") == "0.29.1"
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("offline-weights", "text", "test", "docs"):
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"constraints.txt does not pin {name}"


def test_configuration_docs_cover_every_option():
    from tta.data import TaskSpec
    from tta.fitting import EvalConfig, TransformConfig
    from tta.heads import HeadConfig

    text = (ROOT / "docs" / "configuration.md").read_text()
    for cls in (HeadConfig, TransformConfig, EvalConfig, TaskSpec):
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in text, f"docs/configuration.md: no {cls.__name__}.{field.name}"


def test_api_docs_cover_every_public_module():
    api = "\n".join(p.read_text() for p in (ROOT / "docs").glob("api*.md"))
    api += "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    modules = [p.stem for p in (ROOT / "tta").glob("*.py") if not p.stem.startswith("_")]
    modules += [
        p.name
        for p in (ROOT / "tta").iterdir()
        if (p / "__init__.py").is_file() and not p.name.startswith("_")
    ]
    for name in modules:
        assert f"automodule:: tta.{name}" in api, f"docs/api: tta.{name} is not documented"


def test_api_docs_show_private_modules_only_as_prose():
    """An implementation module may lend its docstring to a page (``:no-index:``), never its members."""
    for page in (ROOT / "docs" / "api").glob("*.md"):
        blocks = re.findall(r"\.\. automodule:: (\S+)\n((?:   :.*\n)*)", page.read_text())
        for module, options in blocks:
            if any(part.startswith("_") for part in module.split(".")[1:]):
                assert ":no-index:" in options and ":members:" not in options, (page.name, module)


def test_subpackages_keep_their_implementation_private():
    """Inside each subpackage only ``__init__`` (and ``__main__``) is public: names are re-exported."""
    public = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tta").glob("*/*.py")
        if not p.stem.startswith("_") and not p.parent.name.startswith("_")
    ]
    assert public == []
    top = sorted(p.stem for p in (ROOT / "tta").glob("*.py") if not p.stem.startswith("_"))
    assert top == ["bound", "errors", "heads", "plugins", "transforms"]


def test_old_module_paths_still_import_with_a_deprecation_warning():
    code = (
        "import importlib, warnings, tta\n"
        "from tta._moved import MOVED\n"
        "for old, (new, package) in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert any(issubclass(w.category, DeprecationWarning) and package in str(w.message)"
        " for w in caught), old\n"
        "from tta.data.datamodule import TaskPairDataModule\n"
        "from tta.modules import TaskPairDataModule as T\n"
        "import tta.data\n"
        "assert TaskPairDataModule is T is tta.data.TaskPairDataModule\n"
        "print(len(MOVED))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    assert int(out.stdout.split()[-1]) == 39  # every module made private by the package-surface change
