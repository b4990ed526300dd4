"""The plugin registry (`tta.plugins`) and `tta plugins ...`, in three layers.

1. Synthetic ``importlib.metadata.EntryPoint`` objects (duplicates, conflicts, broken and wrong-type
   plugins, suggestions, providers, environment controls), injected in place of the installed ones.
2. Fake distributions written into a temporary directory on ``sys.path`` (the real
   ``importlib.metadata`` path: ``*.dist-info/METADATA`` + ``entry_points.txt``).
3. The example package ``plugins/tta-example-plugin`` installed editable (skipped when it is not),
   including a run of the suite with the plugin hidden, as if uninstalled.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tta import plugins as P
from tta._registry import _discovery
from tta.backbones import TimmBackbone, create_backbone
from tta.cli import _plugins as _plugin_cli
from tta.data import ImageDataset, TaskSpec, dataset_splits, load_task
from tta.distances import ExactDistance, SinkhornDistance, create_distance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "tta-example-plugin"
HEAVY = ("timm", "geomloss", "pykeops", "matplotlib", "lightning")

SYNTH_MODULE = "tta_synth_plugin_objs"
BROKEN_MODULE = "tta_synth_plugin_broken"
SYNTH_SOURCE = """
import torch
from tta.data import ImageDataset
from tta.distances import DistanceEstimator
from tta.distances import ExactDistance
from tta.distances import create_distance
from tta.estimators import Estimator


class GoodDistance(ExactDistance):
    name = "good"


class AbstractDistance(DistanceEstimator):
    pass


class NotADistance:
    pass


def good_factory(**kwargs):
    return ExactDistance(**kwargs)


def bad_factory(**kwargs):
    return 42


def any_distance(variant="exact", **kwargs):
    return create_distance(variant, **kwargs)


any_distance.tta_provider_arg = "variant"

INSTANCE = ExactDistance()
NUMBER = 3


def split_loader(split="train"):
    n = 6 if split == "train" else 4
    return ImageDataset("split_loader", torch.zeros(n, 2, 2, dtype=torch.uint8), torch.arange(n) % 2,
                        ["a", "b"], split)


split_loader.splits = ("train", "test")


def list_loader(split="train"):
    return [1, 2, 3]


def _score(features, labels):
    return float(features.sum())


DESCRIPTOR = Estimator("synth_score", _score, "features", True, "O(n D)")
"""


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch):
    monkeypatch.delenv(P.ENV_DISABLE, raising=False)
    monkeypatch.delenv(P.ENV_ALLOW_LIST, raising=False)
    P.refresh()
    yield
    P.refresh()


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory):
    """A directory on ``sys.path`` with the objects the synthetic entry points point at."""
    path = tmp_path_factory.mktemp("synth")
    (path / f"{SYNTH_MODULE}.py").write_text(SYNTH_SOURCE)
    (path / f"{BROKEN_MODULE}.py").write_text("raise RuntimeError('boom at import')\n")
    sys.path.insert(0, str(path))
    yield path
    sys.path.remove(str(path))
    for name in (SYNTH_MODULE, BROKEN_MODULE):
        sys.modules.pop(name, None)


def _ep(name: str, value: str, group: str = "tta.distances", dist: str = "dist-a", version: str = "1.0"):
    return EntryPoint(name, value, group)._for(SimpleNamespace(name=dist, version=version))


@pytest.fixture
def install(monkeypatch, synth_path):
    """``install(*entry_points)``: make these the installed entry points (nothing else)."""

    def _install(*eps: EntryPoint, problems: tuple[str, ...] = ()) -> None:
        monkeypatch.setattr(_discovery, "_installed_entry_points", lambda: (list(eps), list(problems)))
        P.refresh()

    for name in (SYNTH_MODULE, BROKEN_MODULE):
        sys.modules.pop(name, None)
    return _install


def _run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = _plugin_cli.main(list(args), out=out)
    return code, out.getvalue()


# ---------------------------------------------------------------------------------------------- layer 1
def test_builtins_are_registered_and_qualified():
    assert {"exact", "sinkhorn", "auto"} <= set(P.DISTANCES.names())
    assert P.DISTANCES.get("tta:exact") is ExactDistance
    assert P.DISTANCES.get("task-transfer-analysis:exact") is ExactDistance
    assert P.DISTANCES.get(" Exact ") is ExactDistance
    assert "exact" in P.DISTANCES and "tta:sinkhorn" in P.DISTANCES and "nope" not in P.DISTANCES
    assert P.DATASETS.names("*mnist*") == ["fashion_mnist", "kmnist", "mnist", "mnist_5k"]
    assert len(P.ESTIMATORS) == len(P.ESTIMATORS.names()) and "logme" in list(P.ESTIMATORS)
    assert P.get_registry("tta.distances") is P.get_registry("distances") is P.get_registry("distance")
    with pytest.raises(P.PluginNotFoundError, match="Did you mean 'datasets'"):
        P.get_registry("datasts")


def test_listing_imports_nothing_and_loading_is_cached(install):
    install(
        _ep("good", f"{SYNTH_MODULE}:GoodDistance"),
        _ep("broken", f"{BROKEN_MODULE}:Anything", dist="dist-broken"),
    )
    assert "good" in P.DISTANCES.names() and "broken" in P.DISTANCES.names()
    assert "good" in P.DISTANCES
    infos = {i.name: i for i in P.DISTANCES.entries()}
    assert infos["good"].source == "dist-a" and infos["good"].version == "1.0" and not infos["good"].builtin
    assert infos["good"].qualified_name == "dist-a:good" and infos["good"].status == "ok"
    assert SYNTH_MODULE not in sys.modules and BROKEN_MODULE not in sys.modules
    cls = P.DISTANCES.get("good")
    assert cls.__name__ == "GoodDistance" and SYNTH_MODULE in sys.modules
    assert P.DISTANCES.get("dist-a:good") is cls
    assert isinstance(create_distance("good", max_points=7), cls)
    assert BROKEN_MODULE not in sys.modules  # a broken plugin is imported only when asked for


def test_factories_are_checked_and_cached(install):
    install(_ep("fac", f"{SYNTH_MODULE}:good_factory"), _ep("bad", f"{SYNTH_MODULE}:bad_factory"))
    factory = P.DISTANCES.get("fac")
    assert factory is P.DISTANCES.get("fac")  # one wrapper, cached
    assert factory.__name__ == "good_factory" and factory.__wrapped__.__module__ == SYNTH_MODULE
    assert isinstance(P.DISTANCES.create("fac", max_iter=None, max_points=5), ExactDistance)
    with pytest.raises(
        P.PluginTypeError,
        match=r"returned int instance 42; expected an instance of "
        r"tta\.distances\.DistanceEstimator",
    ) as err:
        P.DISTANCES.create("bad")
    assert isinstance(err.value, TypeError) and "dist-a" in str(err.value)
    with pytest.raises(P.PluginTypeError):
        P.DISTANCES.get("bad")()  # the checked factory checks direct calls too


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("NUMBER", r"received int instance 3"),
        ("INSTANCE", r"an instance: point the entry point at its class"),
        ("NotADistance", r"not a subclass of tta\.distances\.DistanceEstimator"),
        ("AbstractDistance", r"abstract \(implement solve\)"),
    ],
)
def test_wrong_type_names_the_contract(install, target, match):
    install(_ep("wrong", f"{SYNTH_MODULE}:{target}", dist="Wrong_Plugin", version="0.3"))
    with pytest.raises(P.PluginTypeError, match=match) as err:
        P.DISTANCES.get("wrong")
    text = str(err.value)
    assert "expected a concrete tta.distances.DistanceEstimator subclass" in text
    assert "distribution 'Wrong_Plugin' 0.3" in text and f"{SYNTH_MODULE}:{target}" in text


def test_wrong_type_for_backbones_datasets_estimators(install):
    install(
        _ep("cwd", "os:getcwd", group="tta.backbones"),
        _ep("listy", f"{SYNTH_MODULE}:list_loader", group="tta.datasets"),
        _ep("plain", f"{SYNTH_MODULE}:good_factory", group="tta.estimators"),
    )
    with pytest.raises(P.PluginTypeError, match=r"returned str instance .*tta\.backbones\.Backbone"):
        create_backbone("cwd")
    with pytest.raises(P.PluginTypeError, match=r"returned list instance .*tta\.data\.ImageDataset"):
        load_task(TaskSpec("listy"))
    with pytest.raises(P.PluginTypeError, match=r"expected a tta\.estimators\.Estimator descriptor"):
        P.ESTIMATORS.get("plain")


def test_dataset_and_estimator_plugins_work(install):
    install(
        _ep("splitty", f"{SYNTH_MODULE}:split_loader", group="tta.datasets"),
        _ep("synth_score", f"{SYNTH_MODULE}:DESCRIPTOR", group="tta.estimators"),
    )
    loader = P.DATASETS.get("splitty")
    assert dataset_splits(loader) == ("train", "test")  # the checked wrapper keeps `splits`
    train, test = load_task(TaskSpec("splitty"))
    assert len(train) == 6 and len(test) == 4 and isinstance(train, ImageDataset)
    from tta.estimators import score

    assert score("synth_score", features=torch.ones(3, 2), labels=torch.zeros(3)) == 6.0
    assert P.ESTIMATORS.get("synth_score").higher_is_better is True


def test_broken_plugin_fails_alone(install):
    install(
        _ep("broken", f"{BROKEN_MODULE}:Anything", dist="broken-plugin", version="2.1"),
        _ep("good", f"{SYNTH_MODULE}:GoodDistance"),
    )
    with pytest.raises(P.PluginLoadError) as err:
        P.DISTANCES.get("broken")
    text = str(err.value)
    assert "distribution 'broken-plugin' 2.1" in text and "RuntimeError: boom at import" in text
    assert "pip install --force-reinstall broken-plugin==2.1" in text and "tta.distances" in text
    assert isinstance(err.value.__cause__, RuntimeError)
    assert P.DISTANCES.get("good").__name__ == "GoodDistance"  # the others still load
    assert {"broken", "good"} <= set(P.DISTANCES.names())  # and listing still works
    results = {r.info.name: r for r in P.check(["distances"])}
    assert results["good"].ok and not results["broken"].ok
    assert "boom at import" in results["broken"].message


def test_two_plugins_one_name_is_ambiguous(install):
    install(
        _ep("twin", f"{SYNTH_MODULE}:GoodDistance", dist="alpha-plugin", version="1.0"),
        _ep("twin", f"{SYNTH_MODULE}:good_factory", dist="Beta.Plugin", version="2.0"),
    )
    with pytest.raises(P.PluginAmbiguousError) as err:
        P.DISTANCES.get("twin")
    text = str(err.value)
    assert "'alpha-plugin' 1.0" in text and "'Beta.Plugin' 2.0" in text
    assert "'alpha-plugin:twin' or 'beta-plugin:twin'" in text
    assert P.DISTANCES.get("alpha-plugin:twin").__name__ == "GoodDistance"
    assert P.DISTANCES.get("beta_plugin:twin").__wrapped__.__name__ == "good_factory"  # any spelling
    names = P.DISTANCES.names()
    assert "twin" not in names and {"alpha-plugin:twin", "beta-plugin:twin"} <= set(names)
    assert "twin" not in P.DISTANCES and "alpha-plugin:twin" in P.DISTANCES
    assert {i.status for i in P.DISTANCES.entries() if i.name == "twin"} == {"ambiguous"}
    assert not any(r.ok for r in P.check(["distances"]) if r.info.name == "twin")


def test_plugin_cannot_take_a_builtin_name(install):
    install(_ep("exact", f"{SYNTH_MODULE}:GoodDistance", dist="shadow-plugin"))
    with pytest.warns(P.PluginWarning, match="'shadow-plugin:exact'"):
        assert P.DISTANCES.get("exact") is ExactDistance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.DISTANCES.get("exact") is ExactDistance  # warned once
    assert P.DISTANCES.get("shadow-plugin:exact").__name__ == "GoodDistance"
    assert "shadow-plugin:exact" in P.DISTANCES.names()
    (info,) = [i for i in P.DISTANCES.entries() if not i.builtin]
    assert info.status == "shadowed" and "reserved for a built-in" in info.problem


def test_one_distribution_declaring_a_name_twice(install):
    install(
        _ep("dup", f"{SYNTH_MODULE}:GoodDistance"),
        _ep("dup", f"{SYNTH_MODULE}:good_factory"),
        _ep("dup", f"{SYNTH_MODULE}:good_factory"),  # an exact repeat is merged
    )
    with pytest.raises(P.PluginAmbiguousError, match="declares distance estimator 'dup' 2 times"):
        P.DISTANCES.get("dup")
    assert "dup" not in P.DISTANCES.names()
    assert {i.status for i in P.DISTANCES.entries() if i.name == "dup"} == {"duplicate"}


def test_invalid_names_are_reported_not_resolved(install):
    install(_ep("Fancy Name", f"{SYNTH_MODULE}:GoodDistance"))
    assert "fancy name" not in P.DISTANCES.names()
    with pytest.raises(P.PluginNotFoundError):
        P.DISTANCES.get("Fancy Name")
    (info,) = [i for i in P.DISTANCES.entries() if not i.builtin]
    assert info.status == "invalid-name" and "not a lowercase slug" in info.problem
    assert not next(r for r in P.check(["distances"]) if not r.info.builtin).ok


def test_not_found_suggests_close_matches(install):
    install(_ep("sliced_demo", f"{SYNTH_MODULE}:GoodDistance"))
    with pytest.raises(P.PluginNotFoundError) as err:
        P.DISTANCES.get("slicd_demo")
    text = str(err.value)
    assert "Did you mean 'sliced_demo'?" in text and "`tta plugins list --group distances`" in text
    assert isinstance(err.value, KeyError) and not text.startswith("'")
    with pytest.raises(P.PluginNotFoundError, match="Did you mean 'dist-a:sliced_demo'"):
        P.DISTANCES.get("dist-a:slicd_demo")
    with pytest.raises(P.PluginNotFoundError, match="no installed distribution 'nowhere'"):
        P.DISTANCES.get("nowhere:exact")
    for bad in ("", "dist:", ":x", "timm/", "/x"):
        with pytest.raises(P.PluginNotFoundError, match="not a valid"):
            P.BACKBONES.get(bad)


def test_providers(install):
    install(_ep("any", f"{SYNTH_MODULE}:any_distance", dist="meta-plugin"))
    part = P.BACKBONES.get("timm/resnet18")
    assert part.func is TimmBackbone and part.keywords == {"model_name": "resnet18"}
    assert P.BACKBONES.get("tta:timm/hf-hub:timm/Some_Model").keywords == {
        "model_name": "hf-hub:timm/Some_Model"
    }
    assert "timm/anything" in P.BACKBONES
    assert isinstance(P.DISTANCES.create("any/sinkhorn", blur=0.1), SinkhornDistance)
    assert isinstance(P.DISTANCES.create("meta-plugin:any/exact"), ExactDistance)
    with pytest.raises(TypeError, match="already sets variant='exact'"):
        P.DISTANCES.create("any/exact", variant="sinkhorn")
    with pytest.raises(P.PluginNotFoundError, match=r"'exact' in group 'tta\.distances' is not a provider"):
        P.DISTANCES.get("exact/fast")
    results = {r.info.name: r for r in P.check(["distances"])}
    assert results["any"].provider_arg == "variant"
    assert next(r for r in P.check(["backbones"]) if r.info.name == "timm").provider_arg == "model_name"


def test_autoload_can_be_disabled(install, monkeypatch):
    install(_ep("good", f"{SYNTH_MODULE}:GoodDistance"))
    monkeypatch.setenv(P.ENV_DISABLE, "1")
    assert P.DISTANCES.names() == ["auto", "exact", "sinkhorn", "subsample"]
    assert [i.name for i in P.DISTANCES.entries() if not i.builtin] == []
    with pytest.raises(
        P.PluginNotFoundError, match=r"declared by dist-a, but third-party plugins are disabled"
    ):
        P.DISTANCES.get("good")
    with pytest.raises(P.PluginNotFoundError, match="installed but disabled"):
        P.DISTANCES.get("dist-a:good")
    assert P.DISTANCES.get("exact") is ExactDistance
    assert [d.enabled for d in P.plugin_distributions()] == [False]
    monkeypatch.setenv(P.ENV_DISABLE, "0")
    assert P.DISTANCES.get("good").__name__ == "GoodDistance"


def test_allow_list(install, monkeypatch):
    install(
        _ep("twin", f"{SYNTH_MODULE}:GoodDistance", dist="alpha-plugin"),
        _ep("twin", f"{SYNTH_MODULE}:good_factory", dist="beta-plugin"),
    )
    monkeypatch.setenv(P.ENV_ALLOW_LIST, " Alpha_Plugin , other ")
    assert P.allowed_distributions() == {"alpha-plugin", "other"}
    assert P.DISTANCES.get("twin").__name__ == "GoodDistance"  # no longer ambiguous
    with pytest.raises(P.PluginNotFoundError, match="'beta-plugin' is installed but disabled"):
        P.DISTANCES.get("beta-plugin:twin")
    code, text = _run_cli("list", "--group", "distances")
    assert code == 0 and "alpha-plugin" in text and "beta-plugin" not in text and "TTA_PLUGINS" in text
    assert "warning: TTA_PLUGINS names 'other'" in text


def test_custom_registry_keeps_the_decorator_api():
    reg: P.Registry = P.Registry("tta.test_things", "thing")
    reg.register("alpha")(dict)

    @reg.register(provider_arg="flavour")
    def maker(flavour: str = "plain", size: int = 1) -> str:
        return f"{flavour}:{size}"

    assert reg.names() == ["alpha", "maker"] and "maker" in reg and reg.get("alpha") is dict
    assert reg.create("maker/sweet", size=None) == "sweet:1"
    with pytest.raises(ValueError, match="not a lowercase slug"):
        reg.register("Bad Name")(dict)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(list)


def test_plugins_cli_in_process(install):
    install(
        _ep("good", f"{SYNTH_MODULE}:GoodDistance", version="1.5"),
        _ep("broken", f"{BROKEN_MODULE}:X", dist="dist-broken"),
    )
    code, text = _run_cli("list")
    assert code == 0 and "tta.backbones" in text and "provider: timm/<model_name>" in text
    assert "good" in text and "dist-a 1.5" in text and BROKEN_MODULE not in sys.modules
    code, text = _run_cli("list", "--json", "--group", "distances")
    payload = json.loads(text)
    assert code == 0 and payload["autoload_disabled"] is False and payload["allow_list"] is None
    good = next(e for e in payload["entries"] if e["name"] == "good")
    assert good["qualified_name"] == "dist-a:good" and good["target"] == f"{SYNTH_MODULE}:GoodDistance"
    code, text = _run_cli("list", "--load", "--group", "distances")
    assert code == 0 and "ERROR" in text and "boom at import" in text and "loaded" in text
    code, text = _run_cli("check", "--group", "distances")
    assert code == 1 and "ERROR" in text and "1 problem(s)" in text
    code, text = _run_cli("check", "--distribution", "dist-a", "--json")
    payload = json.loads(text)
    assert code == 0 and payload["ok"] and [r["name"] for r in payload["results"]] == ["good"]
    code, text = _run_cli("check", "--distribution", "nothing-here")
    assert code == 1 and "provides no enabled tta plugin" in text
    assert _plugin_cli.plugin_version_lines() == [
        "plugin dist-a 1.5 (tta.distances)",
        "plugin dist-broken 1.0 (tta.distances)",
    ]


def test_unreadable_metadata_is_a_check_problem(install):
    install(problems=("distribution 'mangled' has unreadable entry points (ValueError())",))
    code, text = _run_cli("check", "--group", "estimators")
    assert code == 1 and "mangled" in text
    assert P.DISTANCES.get("exact") is ExactDistance  # lookups are unaffected


# ---------------------------------------------------------------------------------------------- layer 2
def _write_dist(site: Path, name: str, version: str, entry_points: str, modules: dict[str, str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    good = """
        from tta.backbones import Backbone, ImagePreprocess
        from tta.distances import ExactDistance

        class FakeDistance(ExactDistance):
            name = "fake"

        class FakeBackbone(Backbone):
            def __init__(self, width=4):
                super().__init__()
                self.name, self.feature_dim = "fake", width
                self.freeze()

            def forward(self, x):
                return x.flatten(1)[:, : self.feature_dim]

            def preprocess(self):
                return ImagePreprocess((3, 8, 8), "bilinear", 1.0, "center", (0.5,) * 3, (0.5,) * 3)

            def weights_fingerprint(self):
                return "none"
    """
    _write_dist(
        site,
        "fake-good",
        "1.2.3",
        """
        [tta.distances]
        fake_distance = fake_good_mod:FakeDistance
        [tta.backbones]
        fake_backbone = fake_good_mod:FakeBackbone
        [console_scripts]
        unrelated = fake_good_mod:main
        """,
        {"fake_good_mod": good},
    )
    for name, module in (("fake-dup-a", "fake_dup_a_mod"), ("Fake_Dup.B", "fake_dup_b_mod")):
        _write_dist(site, name, "0.1", f"[tta.distances]\nshared = {module}:FakeDistance\n", {module: good})
    _write_dist(
        site,
        "fake-broken",
        "9.9",
        "[tta.datasets]\nbroken_data = fake_broken_mod:load\n",
        {"fake_broken_mod": "import this_module_does_not_exist_anywhere\n"},
    )
    return site


FAKE_MODULES = ("fake_good_mod", "fake_dup_a_mod", "fake_dup_b_mod", "fake_broken_mod")


@pytest.fixture
def on_path(fake_site, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_site))
    for module in FAKE_MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    P.refresh()
    return fake_site


def _env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (P.ENV_DISABLE, P.ENV_ALLOW_LIST)}
    paths = [str(ROOT), *([str(site)] if site else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def test_fake_distributions_through_importlib_metadata(on_path):
    infos = {(i.name, i.source): i for i in P.DISTANCES.entries() if not i.builtin}
    assert infos[("fake_distance", "fake-good")].version == "1.2.3"
    assert infos[("shared", "Fake_Dup.B")].status == "ambiguous"
    assert not any(m in sys.modules for m in FAKE_MODULES)  # listing read metadata only
    assert P.DISTANCES.get("fake_distance").__name__ == "FakeDistance"
    assert P.DISTANCES.get("fake-dup-b:shared").__module__ == "fake_dup_b_mod"
    with pytest.raises(P.PluginAmbiguousError, match="'fake-dup-a:shared' or 'fake-dup-b:shared'"):
        P.DISTANCES.get("shared")
    with pytest.raises(P.PluginLoadError, match=r"'fake-broken' 9\.9.*ModuleNotFoundError") as err:
        P.DATASETS.get("broken_data")
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert "fake_good_mod" in sys.modules and "fake_dup_a_mod" not in sys.modules
    assert create_backbone("fake-good:fake_backbone", width=3).feature_dim == 3
    dists = {d.name: d for d in P.plugin_distributions()}
    assert dists["fake-good"].groups == ("tta.backbones", "tta.distances")
    assert {"fake-good", "fake-dup-a", "Fake_Dup.B", "fake-broken"} <= set(dists)


def test_fake_distributions_check(on_path):
    results = P.check()
    bad = {(r.info.source, r.info.name) for r in results if not r.ok}
    assert bad == {("fake-dup-a", "shared"), ("Fake_Dup.B", "shared"), ("fake-broken", "broken_data")}
    assert all(r.ok for r in P.check(distribution="fake-good"))
    code, _ = _run_cli("check", "--distribution", "fake-good")
    assert code == 0


def test_import_tta_imports_no_plugin_and_nothing_heavy(fake_site):
    code = textwrap.dedent(
        f"""
        import json, sys
        import tta
        after_import = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        from tta import plugins
        names = {{g: r.names() for g, r in plugins.REGISTRIES.items()}}
        entries = [i.name for r in plugins.REGISTRIES.values() for i in r.entries()]
        plugin_modules = {(*FAKE_MODULES, "tta_example_plugin")!r}
        print(json.dumps({{
            "heavy": after_import,
            "plugins": sorted(m for m in sys.modules if m.split(".")[0] in plugin_modules),
            "heavy_after_listing": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}),
            "names": names,
        }}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(fake_site), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["heavy"] == [], "`import tta` imported heavy modules"
    assert found["plugins"] == [], "listing imported plugin modules"
    assert found["heavy_after_listing"] == [], "listing imported heavy modules"
    assert "fake_distance" in found["names"]["distances"] and "fake_backbone" in found["names"]["backbones"]


@pytest.mark.slow
def test_tta_command_dispatches_plugins_and_version(fake_site):
    env = _env(fake_site)
    proc = subprocess.run(
        [sys.executable, "-m", "tta.cli", "plugins", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fake-broken" in proc.stdout and "ambiguous" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "tta.cli", "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for package in ("task-transfer-analysis", "torch", "lightning", "timm", "geomloss", "pykeops"):
        assert f"\n{package} " in "\n" + proc.stdout
    assert "plugin fake-good 1.2.3 (tta.backbones, tta.distances)" in proc.stdout


# ---------------------------------------------------------------------------------------------- layer 3
@pytest.fixture
def example_plugin():
    return pytest.importorskip("tta_example_plugin", reason="tta-example-plugin is not installed")


def test_example_plugin_is_discovered_and_checks_clean(example_plugin):
    entries = {(i.group, i.name): i for r in P.REGISTRIES.values() for i in r.entries() if not i.builtin}
    for key in (
        ("tta.backbones", "torchvision"),
        ("tta.datasets", "npy_folder"),
        ("tta.distances", "sliced_wasserstein"),
    ):
        assert entries[key].source == "tta-example-plugin" and entries[key].status == "ok"
    code, text = _run_cli("check", "--distribution", "tta-example-plugin")
    assert code == 0, text
    assert P.DISTANCES.get("sliced_wasserstein") is example_plugin.SlicedWassersteinDistance
    assert any(line.startswith("plugin tta-example-plugin ") for line in _plugin_cli.plugin_version_lines())


def test_example_plugin_respects_the_allow_list(example_plugin, monkeypatch):
    monkeypatch.setenv(P.ENV_ALLOW_LIST, "some-other-plugin")
    with pytest.raises(
        P.PluginNotFoundError, match="declared by tta-example-plugin, but only the plugins of"
    ):
        create_distance("sliced_wasserstein")
    monkeypatch.setenv(P.ENV_ALLOW_LIST, "tta-example-plugin")
    assert create_distance("sliced_wasserstein").name == "sliced_wasserstein"


@pytest.mark.slow
def test_core_import_checks_pass_with_autoload_disabled(example_plugin):
    tests = [
        "tests/test_docs_and_packaging.py::test_import_tta_is_light_and_fast",
        "tests/test_distances.py::test_import_is_light",
        "tests/test_distances.py::test_registry_and_factory",
        "tests/test_backbones.py::test_import_does_not_load_timm_or_lightning",
        "tests/test_estimators.py::test_import_is_light",
        "tests/test_plugins.py::test_builtins_are_registered_and_qualified",
    ]
    env = _env(**{P.ENV_DISABLE: "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(tests)} passed" in proc.stdout
    probe = "from tta import plugins; print(sorted(plugins.DISTANCES.names()))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['auto', 'exact', 'sinkhorn', 'subsample']", out.stderr


# Runs pytest in a fresh interpreter where the example plugin is invisible, as after
# `pip uninstall tta-example-plugin`: its package cannot be imported and its distribution is absent
# from importlib.metadata (the venv itself is shared with other processes, so it is not uninstalled).
_HIDE_PLUGIN = textwrap.dedent(
    """
    import importlib.abc, importlib.metadata as md, re, sys

    class _Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tta_example_plugin":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Uninstalled())
    _distributions = md.distributions

    def distributions(**kwargs):
        for dist in _distributions(**kwargs):
            if re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower() != "tta-example-plugin":
                yield dist

    md.distributions = distributions
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_suite_passes_with_the_example_plugin_uninstalled(example_plugin):
    tests = [
        "tests/test_plugins.py",
        str(EXAMPLE),
        "tests/test_bound.py",
        "tests/test_distances.py::test_registry_and_factory",
        "tests/test_docs_and_packaging.py::test_import_tta_is_light_and_fast",
    ]
    args = ["-q", "-rs", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    proc = subprocess.run(
        [sys.executable, "-c", _HIDE_PLUGIN, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "error" not in summary, summary
    skipped = re.findall(r"SKIPPED \[\d+\] (\S+?):\d+: tta-example-plugin is not installed", out)
    assert {Path(s).name for s in skipped} == {
        "test_example_plugin_contract.py",
        "test_example_plugin_objects.py",
        "test_example_plugin_fit.py",
        "test_plugins.py",  # layer 3
    }, out[-3000:]
