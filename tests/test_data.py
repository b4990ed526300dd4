"""Datasets, tasks, feature extraction and the feature cache."""

from __future__ import annotations

import gzip
import json
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import tta.data._datasets as datasets_mod
from tta.backbones import Backbone, EfficientNetLite0, ImagePreprocess
from tta.data import (
    DatasetNotFoundError,
    ExtractedFeatures,
    FeatureCache,
    ImageDataset,
    TaskSpec,
    default_cache_dir,
    digits,
    extract_features,
    fashion_mnist,
    get_features,
    load_task,
    mnist_5k,
    read_idx,
)
from tta.plugins import DATASETS, PluginNotFoundError

HAS_FMNIST = (datasets_mod.FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason="apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------------------------- datasets


@needs_fmnist
def test_fashion_mnist_debian():
    train, test = fashion_mnist("train"), fashion_mnist(split="test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(torch.unique(train.labels), torch.arange(10))
    assert torch.equal(train.class_counts(), torch.full((10,), 6000))
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert (train.split, test.split) == ("train", "test")
    assert DATASETS.get("fashion_mnist") is fashion_mnist
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("validation")


def test_fashion_mnist_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets_mod, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError) as err:
        fashion_mnist("train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download: true" in msg
    with pytest.raises(DatasetNotFoundError, match="torchvision found no files"):
        fashion_mnist("test", root=str(tmp_path / "empty"))


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_torchvision_root(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets_mod, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "missing")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    ds = fashion_mnist("train", root=str(tmp_path))
    assert torch.equal(ds.images, torch.from_numpy(images)) and torch.equal(
        ds.labels, torch.from_numpy(labels).long()
    )


def test_read_idx(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", arr, gz=True)
    out = read_idx(tmp_path / "a-idx3-ubyte.gz")
    assert np.array_equal(out, arr)
    data = (tmp_path / "a-idx3-ubyte.gz").read_bytes()
    (tmp_path / "b.gz").write_bytes(gzip.compress(gzip.decompress(data)[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_mnist_5k():
    ds = mnist_5k()
    assert ds.images.shape == (5000, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.class_counts(), torch.full((10,), 500))
    assert ds.split is None and ds.images.max() > 200


def test_digits():
    ds = digits()
    assert ds.images.shape == (1797, 8, 8) and ds.images.dtype == torch.uint8
    assert int(ds.images.max()) == 255 and int(ds.images.min()) == 0
    assert ds.num_classes == 10 and len(ds) == 1797


def test_image_dataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="labels"):
        ImageDataset("x", torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="class names"):
        ImageDataset("x", torch.zeros(2, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a"])


# ------------------------------------------------------------------------------------------------ tasks


def test_task_reproducible_and_seeded():
    spec = TaskSpec("digits", classes=[3, 8], train_per_class=20, test_per_class=10, seed=1)
    a_train, a_test = load_task(spec)
    b_train, b_test = load_task(
        TaskSpec("digits", classes=[3, 8], train_per_class=20, test_per_class=10, seed=1)
    )
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.labels, b_test.labels)
    c_train, _ = load_task(TaskSpec("digits", classes=[3, 8], train_per_class=20, test_per_class=10, seed=2))
    assert not torch.equal(a_train.images, c_train.images)
    # train and test never share a sample
    flat = {bytes(x.numpy()) for x in load_task(TaskSpec("digits", seed=1))[0].images}
    assert not any(bytes(x.numpy()) in flat for x in load_task(TaskSpec("digits", seed=1))[1].images[:50])


def test_task_stratified_split():
    full = digits()
    train, test = load_task(TaskSpec("digits", test_fraction=0.25, seed=0))
    assert len(train) + len(test) == len(full)
    counts = full.class_counts().float()
    torch.testing.assert_close(test.class_counts().float(), torch.round(counts * 0.25), atol=1, rtol=0)
    assert train.split == "train" and test.split == "test"


def test_task_class_subset_remap():
    train, test = load_task(TaskSpec("mnist_5k", classes=[7, 2, 5]))
    assert train.class_names == ["7", "2", "5"] and test.num_classes == 3
    assert torch.equal(train.class_counts(), torch.full((3,), 400))
    assert torch.equal(test.class_counts(), torch.full((3,), 100))
    full = mnist_5k()
    first7 = full.images[full.labels == 7]
    # label 0 now means digit 7: each of its images is a digit-7 image of the full set
    lookup = {bytes(x.numpy()) for x in first7}
    assert all(bytes(x.numpy()) in lookup for x in train.images[train.labels == 0])


def test_task_caps_nested_and_class_independent():
    small, _ = load_task(TaskSpec("mnist_5k", classes=[3, 5], train_per_class=5, test_per_class=2))
    large, _ = load_task(TaskSpec("mnist_5k", classes=[3, 5], train_per_class=50))
    other, _ = load_task(TaskSpec("mnist_5k", classes=[3, 9], train_per_class=5))
    assert torch.equal(small.class_counts(), torch.tensor([5, 5]))
    assert torch.equal(large.class_counts(), torch.tensor([50, 50]))
    big = {bytes(x.numpy()) for x in large.images}
    assert all(bytes(x.numpy()) in big for x in small.images)  # a smaller cap is a subset
    assert torch.equal(small.images[small.labels == 0], other.images[other.labels == 0])  # class 3 unchanged


@needs_fmnist
def test_task_official_split_caps():
    train, test = load_task(TaskSpec("fashion_mnist", classes=[9, 0], train_per_class=4, test_per_class=3))
    assert len(train) == 8 and len(test) == 6
    assert train.class_names == ["Ankle boot", "T-shirt/top"]
    assert (train.split, test.split) == ("train", "test")


def test_task_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown class ids \[10, -1\]"):
        load_task(TaskSpec("digits", classes=[1, 10, -1]))
    with pytest.raises(
        ValueError, match=r"class 4 \('4'\) has 400 samples in the train split, fewer than the 1000"
    ):
        load_task(TaskSpec("mnist_5k", classes=[4], train_per_class=1000))
    with pytest.raises(ValueError, match="more than once"):
        TaskSpec("digits", classes=[1, 1])
    with pytest.raises(ValueError, match="test_fraction"):
        TaskSpec("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="train_per_class"):
        TaskSpec("digits", train_per_class=0)
    with pytest.raises(PluginNotFoundError, match="Did you mean 'digits'"):
        load_task(TaskSpec("digitz"))

    def tiny() -> ImageDataset:  # class 1 has a single sample: nothing left for the test split
        return ImageDataset(
            "tiny", torch.zeros(5, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 0, 0, 1]), ["a", "b"]
        )

    monkeypatch.setitem(DATASETS._objects, "tiny-test", tiny)
    with pytest.raises(ValueError, match=r"class 1 \('b'\) has no samples in the test split"):
        load_task(TaskSpec("tiny-test"))


def test_task_spec_from_yaml():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--task", type=TaskSpec)
    cfg = parser.parse_args(["--task", "{dataset: digits, classes: [1, 2], seed: 3, dataset_kwargs: {}}"])
    spec = parser.instantiate(cfg).task
    assert spec == TaskSpec("digits", classes=[1, 2], seed=3, dataset_kwargs={})
    assert load_task({"dataset": "digits", "classes": [1, 2], "seed": 3})[0].num_classes == 2


# ------------------------------------------------------------------------------- features and cache


class CountingBackbone(Backbone):
    """A tiny deterministic backbone that counts its forward calls."""

    def __init__(self, image_size: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        self.name, self.feature_dim, self.calls = "counting", 4, 0
        self._pre = ImagePreprocess.from_data_config(
            {
                "input_size": (3, image_size, image_size),
                "interpolation": "bilinear",
                "mean": (0.5,) * 3,
                "std": (0.5,) * 3,
            }
        )
        self.freeze()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x)

    def preprocess(self) -> ImagePreprocess:
        return self._pre

    def weights_fingerprint(self) -> str:
        return "random-init"


SPEC = TaskSpec("digits", classes=[0, 1], train_per_class=5, test_per_class=5)


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_extract_features_efficientnet_lite0():
    bb = EfficientNetLite0(image_size=64)
    train, _ = load_task(TaskSpec("mnist_5k", classes=[0, 1], train_per_class=5))
    feats = extract_features(bb, train, batch_size=4, progress=True)
    assert feats.shape == (10, 1280) and feats.dtype == torch.float32
    assert not feats.is_inference() and not feats.requires_grad
    direct = bb(bb.preprocess().batch(train.images[:3]))
    torch.testing.assert_close(feats[:3], direct, rtol=1e-4, atol=1e-4)


def test_extract_features_workers_and_batches():
    bb = CountingBackbone()
    train, _ = load_task(SPEC)
    a = extract_features(bb, train, batch_size=3, progress=False)
    assert bb.calls == 4  # ceil(10 / 3)
    b = extract_features(bb, train, batch_size=64, num_workers=1, progress=False)
    torch.testing.assert_close(a, b)


def test_cache_hit_on_second_call(cache, monkeypatch):
    import tta.data._features as features_mod

    calls = []
    real = features_mod.extract_features
    monkeypatch.setattr(features_mod, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    bb = CountingBackbone()
    first = get_features(bb, SPEC, "train", cache=cache, progress=False)
    second = get_features(bb, SPEC, "train", cache=cache, progress=False)
    assert len(calls) == 1
    assert isinstance(second, ExtractedFeatures) and second.cache_hit and not first.cache_hit
    assert torch.equal(first.features, second.features) and torch.equal(first.labels, second.labels)
    feats, labels = second  # unpacks as a 2-tuple
    assert feats.shape == (10, 4) and labels.tolist().count(1) == 5
    assert second.class_names == ["0", "1"]
    manifest = cache.manifest(second.key)
    assert manifest["meta"]["task"]["classes"] == [0, 1] and manifest["meta"]["n"] == 10
    get_features(bb, SPEC, "test", cache=cache, progress=False)
    assert len(calls) == 2  # another split, another entry


def test_cache_key_changes(cache):
    bb = CountingBackbone().cache_key()
    key = cache.key(bb, SPEC, "train")
    assert key == cache.key(CountingBackbone().cache_key(), TaskSpec(**vars(SPEC)), "train")
    assert len(key) == 64
    variants = [
        cache.key(bb, SPEC, "test"),
        cache.key(
            bb, TaskSpec("digits", classes=[0, 1], train_per_class=5, test_per_class=5, seed=1), "train"
        ),
        cache.key(bb, TaskSpec("digits", classes=[1, 0], train_per_class=5, test_per_class=5), "train"),
        cache.key(bb, TaskSpec("digits", classes=[0, 1], train_per_class=6, test_per_class=5), "train"),
        cache.key(CountingBackbone(image_size=24).cache_key(), SPEC, "train"),
        cache.key({**bb, "weights": "abc"}, SPEC, "train"),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # the test cap does not change the train features
    assert key == cache.key(
        bb, TaskSpec("digits", classes=[0, 1], train_per_class=5, test_per_class=9), "train"
    )
    lite = [EfficientNetLite0(image_size=s).cache_key() for s in (64, 112)]
    assert cache.key(lite[0], SPEC, "train") != cache.key(lite[1], SPEC, "train")
    # every task protocol field that changes the data changes the key, each differently
    protocols = [
        {"shifts": [{"name": "inversion"}]},
        {"shifts": [{"name": "rotation", "degrees": 30}]},
        {"random_classes": 1},
        {"label_map": {"0": "a"}},
    ]
    keys = {cache.key(bb, TaskSpec(**{**vars(SPEC), **extra}), "train") for extra in protocols}
    assert len(keys) == len(protocols) and key not in keys


def test_cache_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "env"))
    assert FeatureCache().root == tmp_path / "env" == default_cache_dir()
    monkeypatch.delenv("TTA_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == Path.home() / ".cache" / "tta" / "features"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # honoured (platformdirs)
        assert default_cache_dir() == tmp_path / "xdg" / "tta" / "features"


def test_cache_writes_take_a_lock_that_a_second_writer_waits_for(tmp_path):
    """Two writers of one entry never interleave: the second waits for the lock (filelock)."""
    import threading

    from filelock import Timeout

    cache = FeatureCache(tmp_path / "c")
    key = "a" * 64
    feats, labels = torch.randn(5, 3), torch.arange(5)
    with cache.lock(key):
        with pytest.raises(Timeout):
            cache.lock(key).acquire(timeout=0.2)  # another process (or thread) cannot take it meanwhile
        done = threading.Event()
        writer = threading.Thread(target=lambda: (cache.save(key, feats, labels), done.set()))
        writer.start()
        assert not done.wait(0.5)  # save() is blocked on the lock
    writer.join(timeout=30)
    assert done.is_set() and cache.verify(key) is None
    assert [e.status for e in cache.scan()] == ["ok"]  # the lock folder is not an entry or a leftover
    assert (tmp_path / "c" / ".locks").is_dir()


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_manifest", "bad_json", "drop_data"])
def test_corrupt_entry_detected_and_rebuilt(cache, damage):
    bb = CountingBackbone()
    first = get_features(bb, SPEC, "train", cache=cache, progress=False)
    data, manifest = cache.paths(first.key)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-17])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-3] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "drop_manifest":
        manifest.unlink()
    elif damage == "bad_json":
        manifest.write_text('{"format": 1, "key"')
    else:
        data.unlink()
    with pytest.warns(UserWarning, match="corrupt or partial"):
        assert cache.load(first.key) is None
    calls = bb.calls
    with pytest.warns(UserWarning, match="corrupt or partial"):
        rebuilt = get_features(bb, SPEC, "train", cache=cache, progress=False)
    assert bb.calls > calls and not rebuilt.cache_hit
    torch.testing.assert_close(rebuilt.features, first.features)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(first.key) is not None  # the rebuilt entry is sound


def test_cache_shape_mismatch_detected(cache):
    key = "k" * 64
    cache.save(key, torch.randn(3, 2), torch.arange(3), meta={})
    manifest = cache.paths(key)[1]
    record = json.loads(manifest.read_text())
    record["features"]["shape"] = [4, 2]
    manifest.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="unexpected tensors"):
        assert cache.load(key) is None


def test_cache_atomic_write(cache, monkeypatch):
    import safetensors.torch

    key = "a" * 64
    cache.save(key, torch.ones(2, 3), torch.arange(2), meta={"v": 1})
    assert cache.load(key) is not None

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.save(key, torch.zeros(2, 3), torch.arange(2), meta={"v": 2})
    manifest = cache.paths(key)[1]
    assert not manifest.exists()  # the old entry was invalidated before the data was touched
    assert [p.name for p in cache.root.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.warns(UserWarning, match="without a manifest"):
        assert cache.load(key) is None

    new_key = "b" * 64
    with pytest.raises(OSError):
        cache.save(new_key, torch.zeros(2, 3), torch.arange(2))
    assert not any(p.name.startswith(new_key) for p in cache.root.iterdir())
    assert cache.load(new_key) is None  # a plain miss


def test_no_cache_always_extracts():
    bb = CountingBackbone()
    a = get_features(bb, SPEC, "test", cache=None, progress=False)
    b = get_features(bb, SPEC, "test", cache=None, progress=False)
    assert bb.calls == 2 and a.key is None and torch.equal(a.features, b.features)
