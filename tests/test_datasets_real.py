"""Real dataset loaders read torchvision's on-disk layouts exactly (tiny fake files, no network), and the
offline sets (LFW subset, SMS spam) load with their documented sizes."""

from __future__ import annotations

import bz2
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tta.data._torchvision_sets as tvs
from tta.data import (
    DatasetNotFoundError,
    ImageDataset,
    LazyImageDataset,
    TaskSpec,
    TextDataset,
    lfw,
    load_task,
)
from tta.data._datasets import decode_square
from tta.data._text import read_labelled_lines, sms_spam
from tta.plugins import DATASETS

RNG = np.random.default_rng(0)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).astype(np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("kmnist", "KMNIST")])
def test_mnist_like_reads_torchvision_idx_files(tmp_path, name, folder):
    written = _fake_mnist(tmp_path, folder)
    loader = DATASETS.get(name)
    assert loader.splits == ("train", "test")
    for split in ("train", "test"):
        ds = loader(split=split, root=str(tmp_path))
        images, labels = written[split]
        assert isinstance(ds, ImageDataset) and ds.split == split and ds.name == name
        assert ds.images.dtype == torch.uint8 and torch.equal(ds.images, torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels).long())
        assert ds.num_classes == 10
    if name == "mnist":
        assert ds.class_names[0] == "0 - zero" and ds.class_names[9] == "9 - nine"
    else:
        assert ds.class_names[0] == "o" and len(set(ds.class_names)) == 10


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_reads_pickled_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # the fake batches do not have the real MD5 sums: check existence only
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(3)]
        _pickle(base / name, {"data": data, "labels": labels})
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(base / "batches.meta", {"label_names": names})
    train = DATASETS.get("cifar10")(split="train", root=str(tmp_path))
    expected = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    expected = expected.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert train.images.shape == (15, 32, 32, 3) and torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == [y for k in range(1, 6) for y in batches[f"data_batch_{k}"][1]]
    assert train.class_names == names and train.split == "train"
    test = DATASETS.get("cifar10")(split="test", root=str(tmp_path))
    assert torch.equal(
        test.images[1].permute(2, 0, 1).reshape(-1), torch.from_numpy(batches["test_batch"][0][1])
    )
    # a task on it: class names, caps
    spec = TaskSpec("cifar10", classes=["Frog", 5], dataset_kwargs={"root": str(tmp_path)}, train_per_class=1)
    tr, te = load_task(spec)  # test batch labels: 5, 6, 7
    assert tr.class_names == ["frog", "dog"] and tr.class_counts().tolist() == [1, 1]
    assert te.labels.tolist() == [1, 0] and torch.equal(te.images, test.images[:2])


def test_usps_reads_bz2_libsvm(tmp_path):
    k = RNG.integers(0, 129, (4, 256))  # pixel values k/64 - 1 are exact in float32
    labels = [3, 10, 1, 7]  # 1-based in the file
    for fname in ("usps.bz2", "usps.t.bz2"):
        lines = [
            f"{y} " + " ".join(f"{j + 1}:{v / 64 - 1:.6f}" for j, v in enumerate(row))
            for y, row in zip(labels, k, strict=True)
        ]
        with bz2.open(tmp_path / fname, "wt") as f:
            f.write("\n".join(lines) + "\n")
    ds = DATASETS.get("usps")(split="test", root=str(tmp_path))
    expected = np.floor(k * 255 / 128).astype(np.uint8).reshape(4, 16, 16)
    assert torch.equal(ds.images, torch.from_numpy(expected))
    assert ds.labels.tolist() == [2, 9, 0, 6] and ds.class_names == [str(i) for i in range(10)]


def test_svhn_reads_mat_files(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    x = RNG.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = DATASETS.get("svhn")(split="test", root=str(tmp_path))
    assert torch.equal(ds.images, torch.from_numpy(x.transpose(3, 0, 1, 2).copy()))
    assert ds.labels.tolist() == [0, 1, 2, 0, 9]  # torchvision maps label 10 to digit 0


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_dtd_lazy_train_is_train_plus_val(tmp_path):
    data = tmp_path / "dtd" / "dtd"
    pixels = {}
    for cls in ("banded", "woven"):
        for i in range(3):
            arr = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            _png(data / "images" / cls / f"{cls}_{i}.png", arr)
            pixels[f"{cls}/{cls}_{i}.png"] = arr
    (data / "labels").mkdir()
    (data / "labels" / "train1.txt").write_text("banded/banded_0.png\nwoven/woven_0.png\n")
    (data / "labels" / "val1.txt").write_text("banded/banded_1.png\nwoven/woven_1.png\n")
    (data / "labels" / "test1.txt").write_text("banded/banded_2.png\nwoven/woven_2.png\n")
    train = DATASETS.get("dtd")(split="train", root=str(tmp_path), image_size=16)
    assert isinstance(train, LazyImageDataset) and len(train) == 4
    assert train.labels.tolist() == [0, 1, 0, 1] and train.class_names == ["banded", "woven"]
    decoded = train.load()
    assert decoded.images.shape == (4, 16, 16, 3) and decoded.images.dtype == torch.uint8
    expected = decode_square(Image.fromarray(pixels["woven/woven_1.png"]), 16)
    assert torch.equal(decoded.images[3], expected)
    assert len(DATASETS.get("dtd")(split="val", root=str(tmp_path))) == 2


def test_missing_files_name_the_root(tmp_path, monkeypatch):
    empty = tmp_path / "nothing"
    for name in ("cifar10", "mnist", "usps", "svhn"):
        with pytest.raises(DatasetNotFoundError) as err:
            DATASETS.get(name)(split="train", root=str(empty))
        msg = str(err.value)
        assert str(empty) in msg and "download: true" in msg and name in msg
    monkeypatch.setenv("TTA_DATA_DIR", str(tmp_path / "env"))
    assert tvs.default_data_root() == tmp_path / "env"
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "env")):
        DATASETS.get("cifar100")(split="test")
    with pytest.raises(DatasetNotFoundError, match=r"image-net\.org"):
        DATASETS.get("imagenet")(split="train", root=str(empty), download=True)
    with pytest.raises(DatasetNotFoundError, match=r"image-net\.org"):
        DATASETS.get("imagenet")(split="test", root=str(empty))
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        DATASETS.get("cifar10")(split="validation", root=str(empty))


def test_every_torchvision_name_is_registered():
    import torchvision.datasets

    for name, cls in tvs.TORCHVISION_DATASETS.items():
        assert callable(DATASETS.get(name)) and hasattr(torchvision.datasets, cls)
    splits = {name: getattr(DATASETS.get(name), "splits", None) for name in tvs.TORCHVISION_DATASETS}
    assert splits["caltech101"] is None and all(
        s == ("train", "test") for n, s in splits.items() if n != "caltech101"
    )


# ------------------------------------------------------------------------------------------ image_folder


def _tree(root: Path, per_class: dict[str, int], size=(12, 12)) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for cls, n in per_class.items():
        out[cls] = []
        for i in range(n):
            arr = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
            _png(root / cls / f"{i:03d}.png", arr)
            out[cls].append(arr)
    return out


def test_image_folder_single_tree_seeded_split(tmp_path):
    written = _tree(tmp_path / "tree", {"zebra": 5, "ant": 4})
    ds = DATASETS.get("image_folder")(root=str(tmp_path / "tree"), image_size=12)
    assert ds.class_names == ["ant", "zebra"] and ds.class_counts().tolist() == [4, 5]
    assert torch.equal(ds.load().images[0], torch.from_numpy(written["ant"][0]))  # same size: exact
    spec = TaskSpec("image_folder", dataset_kwargs={"root": str(tmp_path / "tree"), "image_size": 12}, seed=3)
    train, test = load_task(spec)
    assert isinstance(train, ImageDataset) and len(train) + len(test) == 9
    assert test.class_counts().tolist() == [1, 1]  # round(0.2·4), round(0.2·5)
    all_written = {bytes(a.tobytes()) for arrs in written.values() for a in arrs}
    assert all(bytes(x.numpy().tobytes()) in all_written for x in torch.cat([train.images, test.images]))
    again, _ = load_task(spec)
    assert torch.equal(again.images, train.images)


def test_image_folder_train_test_roots(tmp_path):
    _tree(tmp_path / "tr", {"a": 3, "b": 2}, size=(10, 20))
    _tree(tmp_path / "te", {"a": 1, "b": 2}, size=(10, 20))
    kwargs = {"train_root": str(tmp_path / "tr"), "test_root": str(tmp_path / "te"), "image_size": 8}
    train, test = load_task(TaskSpec("image_folder", dataset_kwargs=kwargs))
    assert train.images.shape == (5, 8, 8, 3) and test.class_counts().tolist() == [1, 2]
    _tree(tmp_path / "te2", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match="different class folders"):
        load_task(TaskSpec("image_folder", dataset_kwargs={**kwargs, "test_root": str(tmp_path / "te2")}))
    with pytest.raises(DatasetNotFoundError, match="no directory"):
        DATASETS.get("image_folder")(root=str(tmp_path / "absent"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not an ImageFolder tree"):
        DATASETS.get("image_folder")(root=str(tmp_path / "flat"))


def test_decode_square_resizes_shorter_side_and_center_crops():
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20, 0] = 255  # left half red
    img[:, 20:, 2] = 255  # right half blue
    out = decode_square(Image.fromarray(img), 16)  # resized to 32×16, columns 8..23 kept
    assert out.shape == (16, 16, 3)
    assert out[:, :7, 0].min() == 255 and out[:, :7, 2].max() == 0
    assert out[:, 9:, 2].min() == 255 and out[:, 9:, 0].max() == 0
    gray = Image.fromarray(np.full((5, 5), 77, dtype=np.uint8))
    assert torch.equal(decode_square(gray, 5), torch.full((5, 5, 3), 77, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------ offline sets


def test_lfw_subset():
    from skimage.data import lfw_subset

    ds = lfw()
    assert ds.images.shape == (200, 25, 25) and ds.images.dtype == torch.uint8
    assert ds.class_names == ["face", "non-face"] and ds.class_counts().tolist() == [100, 100]
    assert ds.labels[:100].eq(0).all() and ds.labels[100:].eq(1).all()
    raw = np.asarray(lfw_subset(), dtype=np.float64)
    torch.testing.assert_close(ds.images.double() / 255, torch.from_numpy(raw), atol=0.5 / 255 + 1e-9, rtol=0)
    train, test = load_task(TaskSpec("lfw", test_fraction=0.25, seed=1))
    assert train.class_counts().tolist() == [75, 75] and test.class_counts().tolist() == [25, 25]


def test_sms_spam_text_dataset():
    ds = sms_spam()
    assert isinstance(ds, TextDataset) and len(ds) == 4862
    assert ds.class_names == ["ham", "spam"] and ds.class_counts().tolist() == [4220, 642]
    assert ds.texts[1].startswith("Free entry in 2 a wkly comp") and ds.labels[1] == 1
    inputs = ds.inputs
    assert isinstance(inputs, list) and all(isinstance(t, str) for t in inputs) and inputs == ds.texts
    inputs.append("x")
    assert len(ds.inputs) == 4862  # read-only: a copy
    sub = ds.subset([1, 0], split="train")
    assert sub.texts == [ds.texts[1], ds.texts[0]] and sub.labels.tolist() == [1, 0] and sub.split == "train"
    train, test = load_task(
        TaskSpec("sms_spam", classes=["spam", "ham"], train_per_class=30, test_per_class=10)
    )
    assert isinstance(train, TextDataset) and train.class_names == ["spam", "ham"]
    assert train.class_counts().tolist() == [30, 30] and test.class_counts().tolist() == [10, 10]
    spam = {t for t, y in zip(ds.texts, ds.labels.tolist(), strict=True) if y == 1}
    assert all(t in spam for t, y in zip(train.texts, train.labels.tolist(), strict=True) if y == 0)
    full_train, full_test = load_task(TaskSpec("sms_spam", seed=0))
    assert len(full_train) + len(full_test) == 4862 and len(full_test) == round(4220 * 0.2) + round(642 * 0.2)
    with pytest.raises(ValueError, match="shifts apply to images"):
        load_task(TaskSpec("sms_spam", shifts=[{"name": "inversion"}]))


def test_text_dataset_validates(tmp_path):
    with pytest.raises(ValueError, match="texts must be strings"):
        TextDataset("x", ["a", 3], torch.tensor([0, 0]), ["c"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="labels must have shape"):
        TextDataset("x", ["a"], torch.tensor([0, 0]), ["c"])
    with pytest.raises(ValueError, match="class names"):
        TextDataset("x", ["a", "b"], torch.tensor([0, 2]), ["c", "d"])
    path = tmp_path / "t.tsv"
    path.write_text("ham\thello\nspam\tbuy now\n\n")
    assert read_labelled_lines(path, ["ham", "spam"]) == (["hello", "buy now"], [0, 1])
    path.write_text("ham\thello\neggs\tno\n")
    with pytest.raises(ValueError, match=r"t.tsv:2: expected"):
        read_labelled_lines(path, ["ham", "spam"])


def test_image_dataset_inputs_is_images():
    ds = ImageDataset(
        "x", torch.arange(8, dtype=torch.uint8).reshape(2, 2, 2), torch.tensor([0, 1]), ["a", "b"]
    )
    assert ds.inputs is ds.images
    with pytest.raises(AttributeError):
        ds.inputs = torch.zeros(1)  # type: ignore[misc]
