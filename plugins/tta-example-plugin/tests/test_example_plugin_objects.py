"""The example plugin's three objects, alone and through tta's registries (skipped when not installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

plugin = pytest.importorskip("tta_example_plugin", reason="tta-example-plugin is not installed")

import ot  # noqa: E402
import scipy.stats  # noqa: E402
from npy_fixtures import make_npy_folder  # noqa: E402
from tta_example_plugin import (  # noqa: E402
    SlicedWassersteinDistance,
    TorchvisionBackbone,
    npy_folder,
    preprocess_for_weights,
    sliced_wasserstein,
)
from tta_example_plugin.distance import sphere_mean_abs  # noqa: E402

from tta import plugins as P  # noqa: E402
from tta.backbones import Backbone, WeightsMismatchError, create_backbone  # noqa: E402
from tta.data import DatasetNotFoundError, ImageDataset, TaskSpec, load_task  # noqa: E402
from tta.distances import DistanceEstimator, create_distance  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.delenv(P.ENV_DISABLE, raising=False)
    monkeypatch.delenv(P.ENV_ALLOW_LIST, raising=False)
    P.refresh()
    yield
    P.refresh()


def _w1(x: torch.Tensor, y: torch.Tensor, a=None, b=None) -> float:
    a = np.full(len(x), 1 / len(x)) if a is None else a.double().numpy()
    b = np.full(len(y), 1 / len(y)) if b is None else b.double().numpy()
    cost = torch.cdist(x.double(), y.double()).numpy()
    return float(ot.emd2(a, b, cost))


# ------------------------------------------------------------------------------------------- registry
def test_entry_points_resolve_to_the_plugin_objects():
    assert P.DISTANCES.get("sliced_wasserstein") is SlicedWassersteinDistance
    assert P.DISTANCES.get("tta-example-plugin:sliced_wasserstein") is SlicedWassersteinDistance
    assert P.BACKBONES.get("torchvision") is TorchvisionBackbone
    loader = P.DATASETS.get("npy_folder")
    assert loader.__wrapped__ is npy_folder  # a checked factory around the plugin's function
    names = {i.name for i in P.DATASETS.entries() if not i.builtin}
    assert "npy_folder" in names
    assert all(r.ok for r in P.check(distribution="tta-example-plugin"))


# ------------------------------------------------------------------------------------------- distance
def test_sphere_mean_abs_closed_forms():
    assert sphere_mean_abs(1) == pytest.approx(1.0)
    assert sphere_mean_abs(2) == pytest.approx(2 / math.pi)
    assert sphere_mean_abs(3) == pytest.approx(0.5)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(200_000, 7, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    assert float(theta[:, 0].abs().mean()) == pytest.approx(sphere_mean_abs(7), rel=5e-3)


def test_one_dimensional_is_exact():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 1, generator=g, dtype=torch.float64), torch.randn(70, 1, generator=g) + 0.7
    a, b = torch.rand(50, generator=g, dtype=torch.float64), torch.rand(70, generator=g, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    expected = scipy.stats.wasserstein_distance(x[:, 0], y[:, 0].double(), a, b)
    for normalize in (True, False):
        est = SlicedWassersteinDistance(num_projections=3, normalize=normalize)
        assert float(est(x, y.double(), a, b)) == pytest.approx(expected, rel=1e-10)


def test_translation_is_recovered_on_w1_scale():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    v = torch.tensor([0.3, -0.2, 0.1, 0.5, 0.0], dtype=torch.float64)
    value = float(SlicedWassersteinDistance(num_projections=4096)(x, x + v))
    assert value == pytest.approx(float(v.norm()), rel=0.03)
    raw = float(SlicedWassersteinDistance(num_projections=4096, normalize=False)(x, x + v))
    assert raw == pytest.approx(value * sphere_mean_abs(5), rel=1e-10)


def test_lower_bound_of_exact_w1():
    g = torch.Generator().manual_seed(3)
    for d in (2, 8, 32):
        x, y = torch.randn(80, d, generator=g), 1.5 * torch.randn(60, d, generator=g) + 0.3
        w1 = _w1(x, y)
        raw = float(SlicedWassersteinDistance(num_projections=64, normalize=False)(x, y))
        assert raw <= w1 * (1 + 1e-6)  # each projection is 1-Lipschitz: exact, no Monte-Carlo slack
        normalized = float(SlicedWassersteinDistance(num_projections=2048)(x, y))
        assert 0 < normalized <= w1 * 1.05


def test_deterministic_symmetric_homogeneous():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g).double()
    a, b = torch.rand(40, generator=g).double(), torch.rand(30, generator=g).double()
    a, b = a / a.sum(), b / b.sum()
    est = SlicedWassersteinDistance(num_projections=32, seed=5)
    first = float(est(x, y, a, b))
    assert float(est(x, y, a, b)) == first
    assert float(SlicedWassersteinDistance(num_projections=32, seed=5)(x, y, a, b)) == first
    assert float(SlicedWassersteinDistance(num_projections=32, seed=6)(x, y, a, b)) != first
    assert float(est(y, x, b, a)) == pytest.approx(first, rel=1e-12)
    assert float(est(x, y, 3 * a, 3 * b)) == pytest.approx(3 * first, rel=1e-12)
    assert float(sliced_wasserstein(x, y, a, b, num_projections=32, seed=5)) == pytest.approx(first)
    resampling = SlicedWassersteinDistance(num_projections=32, seed=5, resample=True)
    assert float(resampling(x, y, a, b)) != float(resampling(x, y, a, b))


def test_labels_per_label_and_joint_paths():
    g = torch.Generator().manual_seed(6)
    cls = torch.arange(60) % 3
    x = torch.randn(60, 4, generator=g, dtype=torch.float64) + cls[:, None]
    y = torch.randn(60, 4, generator=g, dtype=torch.float64) + cls[:, None] + 0.4
    lx = ly = torch.nn.functional.one_hot(cls, 3).double()
    est = SlicedWassersteinDistance(num_projections=128)
    value = est(x, y, None, None, lx, ly)
    assert est.diagnostics["path"] == "per_label" and est.diagnostics["num_subproblems"] == 3
    by_class = sum(float(est(x[cls == k], y[cls == k])) / 3 for k in range(3))
    assert float(value) == pytest.approx(by_class, rel=1e-10)
    a = torch.full((60,), 1 / 60, dtype=torch.float64)
    a[cls == 0] *= 2
    a = a / a.sum()
    joint = est(x, y, a, None, lx, ly, label_cost=10.0)
    assert est.diagnostics["path"] == "joint" and math.isfinite(float(joint)) and float(joint) > 0


def test_gradients_and_diagnostics():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 3, generator=g).requires_grad_(True)
    y = torch.randn(40, 3, generator=g).requires_grad_(True)
    a = torch.full((50,), 1 / 50, requires_grad=True)
    est = create_distance("sliced_wasserstein", num_projections=16)
    assert isinstance(est, SlicedWassersteinDistance) and isinstance(est, DistanceEstimator)
    value = est(x, y, a)
    assert value.dtype == torch.float32
    grads = torch.autograd.grad(value, (x, y, a))
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in grads)
    diag = est.diagnostics
    assert diag["estimator"] == "sliced_wasserstein" and diag["solver"] == "sliced" and diag["converged"]
    assert diag["subproblems"][0]["num_projections"] == 16
    with pytest.raises(ValueError, match="num_projections"):
        SlicedWassersteinDistance(num_projections=0)


# ------------------------------------------------------------------------------------------- dataset
def test_npy_folder_reads_classes_in_order(tmp_path):
    root = make_npy_folder(tmp_path / "data", {"cat": 5, "dog": 4, "eel": 3}, shape=(6, 7, 3))
    ds = npy_folder(str(root))
    assert isinstance(ds, ImageDataset)
    assert ds.class_names == ["cat", "dog", "eel"] and len(ds) == 12
    assert ds.images.shape == (12, 6, 7, 3) and ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [5, 4, 3]
    np.testing.assert_array_equal(ds.images[5].numpy(), np.load(root / "dog" / "0000.npy"))
    sub = npy_folder(str(root), classes=["eel", "cat"], name="pets")
    assert sub.class_names == ["eel", "cat"] and sub.class_counts().tolist() == [3, 5] and sub.name == "pets"


def test_npy_folder_grayscale_and_integer_types(tmp_path):
    root = make_npy_folder(tmp_path / "g", {"a": 2, "b": 2}, shape=(5, 5, 1))
    np.save(root / "a" / "0001.npy", np.full((5, 5), 7, dtype=np.int64))  # integer, in range: accepted
    ds = npy_folder(str(root))
    assert ds.images.shape == (4, 5, 5) and int(ds.images[1].max()) == 7


def test_npy_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not a directory"):
        npy_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class sub-folder"):
        npy_folder(str(tmp_path / "empty"))
    root = make_npy_folder(tmp_path / "d", {"a": 2, "b": 2}, shape=(4, 4))
    with pytest.raises(DatasetNotFoundError, match=r"\['zebra'\]"):
        npy_folder(str(root), classes=["a", "zebra"])
    np.save(root / "b" / "0001.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype float32"):
        npy_folder(str(root))
    np.save(root / "b" / "0001.npy", np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in shape"):
        npy_folder(str(root))
    np.save(root / "b" / "0001.npy", np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected one image"):
        npy_folder(str(root))
    (root / "c").mkdir()
    with pytest.raises(ValueError, match=r"holds no \.npy file"):
        npy_folder(str(root), classes=["c"])


def test_npy_folder_through_load_task(tmp_path):
    root = make_npy_folder(tmp_path / "t", {"x": 10, "y": 10, "z": 10}, shape=(8, 8))
    spec = TaskSpec(
        "npy_folder", classes=[2, 0], test_fraction=0.3, seed=1, dataset_kwargs={"root": str(root)}
    )
    train, test = load_task(spec)
    assert train.class_names == ["z", "x"] and train.class_counts().tolist() == [7, 7]
    assert test.class_counts().tolist() == [3, 3]
    again = load_task(spec)[0]
    assert torch.equal(again.images, train.images)


# ------------------------------------------------------------------------------------------- backbone
def test_backbone_features_are_frozen_and_seeded():
    bb = create_backbone("torchvision/resnet18", image_size=32)
    assert isinstance(bb, TorchvisionBackbone) and isinstance(bb, Backbone)
    assert bb.feature_dim == 512 and bb.name == "torchvision/resnet18"
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training
    images = torch.randint(0, 256, (3, 20, 20, 3), dtype=torch.uint8)
    x = bb.preprocess().batch(images)
    assert x.shape == (3, 3, 32, 32)
    feats = bb(x)
    assert feats.shape == (3, 512) and torch.isfinite(feats).all()
    same = TorchvisionBackbone("resnet18", image_size=32)
    assert torch.equal(same(x), feats)
    other = TorchvisionBackbone("resnet18", image_size=32, init_seed=1)
    assert not torch.equal(other(x), feats)
    assert bb.weights_fingerprint() == "random-init:seed=0" != other.weights_fingerprint()
    assert bb.cache_key()["preprocess"]["input_size"] == [3, 32, 32]


def test_backbone_weights_path_round_trip(tmp_path):
    source = TorchvisionBackbone("resnet18", image_size=32, init_seed=3)
    from torchvision.models import resnet18

    torch.manual_seed(3)
    full = resnet18()  # same initialisation as init_seed=3, classifier included
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    loaded = TorchvisionBackbone("resnet18", weights_path=str(path), image_size=32, init_seed=99)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))
    assert len(loaded.weights_fingerprint()) == 64  # the file's SHA-256
    headless = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    torch.testing.assert_close(
        TorchvisionBackbone("resnet18", weights_path=str(tmp_path / "headless.pth"), image_size=32)(x),
        source(x),
    )
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError, match="does not fit torchvision 'resnet18'"):
        TorchvisionBackbone("resnet18", weights_path=str(tmp_path / "bad.pth"), image_size=32)


def test_backbone_other_architectures_and_errors():
    mobile = create_backbone("torchvision/mobilenet_v3_small", image_size=32)
    assert mobile.feature_dim == 1024 and mobile(torch.zeros(1, 3, 32, 32)).shape == (1, 1024)
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        TorchvisionBackbone("resnet81")
    with pytest.raises(ValueError, match="not both"):
        TorchvisionBackbone("resnet18", weights="DEFAULT", weights_path="x.pth")
    with pytest.raises(ValueError, match=r"no nn\.Linear classifier"):
        TorchvisionBackbone("squeezenet1_0", image_size=64)


def test_preprocess_replays_torchvision_weights_transform():
    from torchvision.models import ResNet18_Weights

    pre = preprocess_for_weights(ResNet18_Weights.IMAGENET1K_V1)
    assert pre.input_size == (3, 224, 224) and pre.crop_pct == pytest.approx(224 / 256)
    assert pre.interpolation == "bilinear" and pre.mean == pytest.approx((0.485, 0.456, 0.406))
    image = torch.randint(0, 256, (300, 260, 3), dtype=torch.uint8)
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()(image.permute(2, 0, 1))
    torch.testing.assert_close(pre(image), reference, atol=2e-2, rtol=0)
