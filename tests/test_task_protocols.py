"""Task protocols: classes by name, K random classes, label merging, domain shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tta.data import ImageDataset, LazyImageDataset, TaskSpec, load_task, resolve_classes
from tta.data._shifts import (
    apply_shifts,
    gaussian_blur,
    gaussian_kernel,
    gaussian_noise,
    inversion,
    resolution,
    rotation,
    sample_seeds,
)
from tta.plugins import DATASETS

NAMES = ["cat", "dog", "car", "truck", "ship", "frog", "horse", "bird", "deer", "plane"]


def _toy() -> ImageDataset:
    """10 classes × 20 images 8×8 RGB; image i is filled with i % 256 and its class in channel 1."""
    n = 200
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 8, 8, 3, dtype=torch.uint8)
    images[..., 0] = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1)
    images[..., 1] = labels.to(torch.uint8).view(n, 1, 1)
    images[..., 2] = torch.randint(0, 256, (n, 8, 8), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )
    return ImageDataset("toy", images, labels, list(NAMES))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(DATASETS._objects, "toy-test", _toy)
    return "toy-test"


# ------------------------------------------------------------------------------------------ classes


def test_classes_by_name_and_id(toy):
    train, test = load_task(TaskSpec(toy, classes=["truck", 0, "Dog"], train_per_class=4, test_per_class=2))
    assert train.class_names == ["truck", "cat", "dog"]
    # channel 1 holds the original class: label k of the task is class [3, 0, 1][k]
    original = train.images[:, 0, 0, 1].long()
    assert torch.equal(original, torch.tensor([3, 0, 1])[train.labels])
    assert train.class_counts().tolist() == [4, 4, 4] and test.class_counts().tolist() == [2, 2, 2]
    same, _ = load_task(TaskSpec(toy, classes=[3, "cat", 1], train_per_class=4, test_per_class=2))
    assert torch.equal(same.images, train.images) and torch.equal(same.labels, train.labels)


def test_class_name_errors(toy):
    with pytest.raises(ValueError, match=r"no class named 'dgo'\. Did you mean 'dog'"):
        load_task(TaskSpec(toy, classes=["cat", "dgo"]))
    with pytest.raises(ValueError, match=r"unknown class ids \[12\]"):
        load_task(TaskSpec(toy, classes=[12, "cat"]))
    with pytest.raises(ValueError, match=r"'cat' \(id 0\) more than once"):
        load_task(TaskSpec(toy, classes=[0, "cat"]))
    with pytest.raises(ValueError, match=r"class ids \(int\) or names"):
        TaskSpec(toy, classes=[1.5])  # type: ignore[list-item]


def test_random_classes_protocol():
    names = [f"c{i}" for i in range(1000)]
    a = resolve_classes(TaskSpec("x", random_classes=100, seed=7), names)
    assert a == resolve_classes(TaskSpec("x", random_classes=100, seed=7), names)  # reproducible
    assert a == sorted(a) and len(set(a)) == 100  # distinct, in class-id order
    b = resolve_classes(TaskSpec("x", random_classes=100, seed=8), names)
    assert len(set(a) & set(b)) < 30  # another seed, other classes (expected overlap 10)
    small = resolve_classes(TaskSpec("x", random_classes=10, seed=7), names)
    assert set(small) <= set(a)  # a smaller K picks a subset of a larger K's classes
    pool = [5, "c9", 11, 3, 700]
    drawn = resolve_classes(TaskSpec("x", classes=pool, random_classes=2, seed=1), names)
    assert len(drawn) == 2 and set(drawn) <= {5, 9, 11, 3, 700} and drawn == sorted(drawn)
    with pytest.raises(ValueError, match="only 5"):
        TaskSpec("x", classes=pool, random_classes=6)
    with pytest.raises(ValueError, match="only 1000 classes"):
        resolve_classes(TaskSpec("x", random_classes=1001), names)


def test_random_classes_uniform_over_seeds():
    names = [str(i) for i in range(10)]
    counts = torch.zeros(10)
    seeds = 2000
    for seed in range(seeds):
        counts[resolve_classes(TaskSpec("x", random_classes=3, seed=seed), names)] += 1
    freq = counts / seeds  # each class is drawn with probability 3/10; binomial std ≈ 0.010
    torch.testing.assert_close(freq, torch.full((10,), 0.3), atol=0.04, rtol=0)


def test_random_classes_task(toy):
    train, test = load_task(TaskSpec(toy, random_classes=4, seed=3, train_per_class=5))
    ids = resolve_classes(TaskSpec(toy, random_classes=4, seed=3), NAMES)
    assert train.class_names == [NAMES[i] for i in ids] and test.num_classes == 4
    assert torch.equal(train.images[:, 0, 0, 1].long(), torch.tensor(ids)[train.labels])


# ------------------------------------------------------------------------------------------ label_map


def test_label_map_merges_classes(toy):
    classes = ["cat", "dog", "car", "truck", "frog"]
    spec = dict(classes=classes, train_per_class=6, test_per_class=3, seed=2)
    plain, _ = load_task(TaskSpec(toy, **spec))
    mapping = {"cat": "animal", "1": "animal", "car": "vehicle", "3": "vehicle"}
    merged, merged_test = load_task(TaskSpec(toy, label_map=mapping, **spec))
    assert merged.class_names == ["animal", "vehicle", "frog"]
    assert merged.class_counts().tolist() == [12, 12, 6] and merged_test.class_counts().tolist() == [6, 6, 3]
    assert torch.equal(merged.images, plain.images)  # caps apply before merging: same samples
    assert torch.equal(merged.labels, torch.tensor([0, 0, 1, 1, 2])[plain.labels])
    spec_obj = TaskSpec(toy, label_map={0: "feline"}, classes=[0, 1])  # type: ignore[dict-item]
    assert spec_obj.label_map == {"0": "feline"}  # JSON-friendly keys
    renamed, _ = load_task(spec_obj)
    assert renamed.class_names == ["feline", "dog"]
    with pytest.raises(ValueError, match=r"label_map: 'ship' is not one of the task's classes"):
        load_task(TaskSpec(toy, classes=[0, 1], label_map={"ship": "x"}))


# ------------------------------------------------------------------------------------------ shifts


def _images(n=6, h=9, w=9, c=None, seed=0) -> torch.Tensor:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def test_rotation():
    x = _images(c=3)
    assert torch.equal(rotation(x, 90), torch.rot90(x, 1, dims=(1, 2)))
    assert torch.equal(rotation(x, -90), torch.rot90(x, 3, dims=(1, 2)))
    assert torch.equal(rotation(x, 360), x) and torch.equal(rotation(rotation(x, 180), 180), x)
    g = _images(h=9, w=9)
    assert torch.equal(rotation(g, 270), torch.rot90(g, -1, dims=(1, 2)))
    # the bilinear path agrees with the exact one at (almost) 90°, and is the identity at (almost) 0°
    assert (rotation(x, 90 + 1e-4).int() - torch.rot90(x, 1, dims=(1, 2)).int()).abs().max() <= 1
    assert (rotation(x, 1e-4).int() - x.int()).abs().max() <= 1
    # 30° counter-clockwise: a dot right of the centre moves up (towards row 0) and stays right
    dot = torch.zeros(1, 41, 41, dtype=torch.uint8)
    dot[0, 20, 30] = 255
    out = rotation(dot, 30).float()[0]
    rows, cols = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    r, c = (out * rows).sum() / out.sum(), (out * cols).sum() / out.sum()
    assert abs(float(r) - (20 - 10 * math.sin(math.radians(30)))) < 0.3
    assert abs(float(c) - (20 + 10 * math.cos(math.radians(30)))) < 0.3
    with pytest.raises(ValueError, match="square"):
        rotation(_images(h=4, w=6), 90)


def test_inversion_is_an_involution():
    x = _images(c=3)
    assert torch.equal(inversion(x), 255 - x) and torch.equal(inversion(inversion(x)), x)
    assert inversion(x).dtype == torch.uint8


def test_noise_std_and_per_sample_seeds():
    x = torch.full((50, 32, 32), 128, dtype=torch.uint8)
    seeds = sample_seeds(0, "test", range(50))
    out = gaussian_noise(x, 20.0, seeds)
    diff = out.double() - 128
    assert abs(float(diff.std()) - 20.0) < 0.3 and abs(float(diff.mean())) < 0.3
    assert torch.equal(out, gaussian_noise(x, 20.0, seeds))  # deterministic
    # sample 7's noise depends on its seed only, not on the other samples
    assert torch.equal(gaussian_noise(x[7:8], 20.0, seeds[7:8])[0], out[7])
    assert not torch.equal(out[0], out[1])
    assert torch.equal(gaussian_noise(x, 0.0, seeds), x)


def test_blur():
    kernel = gaussian_kernel(2.0, 6)
    t = torch.arange(-6.0, 7.0)
    assert abs(float(kernel.sum()) - 1) < 1e-6 and abs(float((kernel * t**2).sum()) - 4.0) < 0.05
    const = torch.full((2, 10, 10, 3), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(const, 1.5), const)
    impulse = torch.zeros(1, 21, 21, dtype=torch.uint8)
    impulse[0, 10, 10] = 255
    k = gaussian_kernel(1.0, 3)
    expected = torch.zeros(21, 21)
    expected[7:14, 7:14] = 255 * torch.outer(k, k)
    assert (gaussian_blur(impulse, 1.0)[0].float() - expected.round()).abs().max() <= 1
    x = _images(n=4, h=32, w=32, c=3)
    out = gaussian_blur(x, 2.0)
    assert abs(float(out.double().mean() - x.double().mean())) < 1.0  # mean preserved (edges reflect)
    assert float(out.double().std()) < 0.3 * float(x.double().std())  # white noise is smoothed


def test_resolution():
    x = _images(n=3, h=32, w=24, c=3)
    out = resolution(x, 6)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(resolution(x, 24), x)  # size >= shorter side: unchanged
    smooth = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 32).expand(1, 32, 32).contiguous()
    err = (resolution(smooth, 8).int() - smooth.int()).abs()  # a ramp of 8 grey levels per pixel survives
    assert err[..., 4:-4].max() <= 8 and err.max() <= 16  # (the edge pixels are clamped)
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2 * 255).to(torch.uint8).unsqueeze(0)
    flat = resolution(checker, 8).double()
    assert abs(float(flat.mean()) - 127.5) < 2 and float(flat.std()) < 5  # finest detail gone


def test_shifts_in_tasks(toy):
    base = dict(classes=[1, 4], train_per_class=5, test_per_class=3, seed=4)
    plain_train, plain_test = load_task(TaskSpec(toy, **base))
    inv_train, inv_test = load_task(TaskSpec(toy, shifts=[{"name": "inversion"}], **base))
    assert torch.equal(inv_train.images, 255 - plain_train.images)
    assert torch.equal(inv_test.images, 255 - plain_test.images)
    both = [{"name": "rotation", "degrees": 90}, {"name": "noise", "std": 10.0}]
    a, _ = load_task(TaskSpec(toy, shifts=both, **base))
    b, _ = load_task(TaskSpec(toy, shifts=both, **base))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, plain_train.labels)
    c, _ = load_task(TaskSpec(toy, shifts=both, **{**base, "seed": 5}))
    assert not torch.equal(a.images, c.images)
    # the noise of a sample does not depend on the other samples kept: a smaller cap, same noisy images
    small, _ = load_task(TaskSpec(toy, shifts=both, **{**base, "train_per_class": 2}))
    big = {bytes(img.numpy().tobytes()) for img in a.images}
    assert all(bytes(img.numpy().tobytes()) in big for img in small.images)
    direct = apply_shifts(plain_train.images, [{"name": "rotation", "degrees": 90}])
    assert torch.equal(direct, torch.rot90(plain_train.images, 1, dims=(1, 2)))


def test_shift_validation():
    with pytest.raises(ValueError, match="unknown shift 'twist'; known: rotation"):
        TaskSpec("x", shifts=[{"name": "twist"}])
    with pytest.raises(ValueError, match=r"\(rotation\) takes parameters \['degrees'\]"):
        TaskSpec("x", shifts=[{"name": "rotation", "angle": 3}])
    with pytest.raises(ValueError, match="std must be >= 0"):
        TaskSpec("x", shifts=[{"name": "noise", "std": -1}])
    with pytest.raises(ValueError, match="must be a number"):
        TaskSpec("x", shifts=[{"name": "blur", "sigma": "big"}])
    with pytest.raises(ValueError, match="uint8"):
        inversion(torch.zeros(2, 3, 3))


def test_task_spec_yaml_new_fields():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--task", type=TaskSpec)
    cfg = parser.parse_args(
        [
            "--task",
            "{dataset: cifar10, classes: [cat, 3], random_classes: 1, label_map: {cat: pet, 3: pet}, "
            "shifts: [{name: rotation, degrees: 30}, {name: noise, std: 20}]}",
        ]
    )
    spec = parser.instantiate(cfg).task
    assert spec.classes == ["cat", 3] and spec.random_classes == 1
    assert spec.label_map == {"cat": "pet", "3": "pet"}
    assert spec.shifts == [{"name": "rotation", "degrees": 30}, {"name": "noise", "std": 20}]
    import json
    from dataclasses import asdict

    json.dumps(asdict(spec), sort_keys=True)  # JSON-serialisable for the cache key


# ------------------------------------------------------------------------------------------ lazy images


class _CountingSource:
    def __init__(self, images: list[np.ndarray]) -> None:
        self.images, self.calls = images, 0

    def __getitem__(self, i: int) -> Image.Image:
        self.calls += 1
        return Image.fromarray(self.images[i])


def test_lazy_dataset_decodes_only_the_kept_samples(monkeypatch):
    rng = np.random.default_rng(1)
    source = _CountingSource([rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(40)])

    def lazy() -> LazyImageDataset:
        return LazyImageDataset(
            "lazy", source, torch.arange(40), torch.arange(40) % 4, list("abcd"), image_size=6
        )

    monkeypatch.setitem(DATASETS._objects, "lazy-test", lazy)
    train, _ = load_task(TaskSpec("lazy-test", classes=["b", "d"], train_per_class=3, test_per_class=2))
    assert source.calls == 10 and isinstance(train, ImageDataset)
    assert train.images.shape == (6, 6, 6, 3) and train.class_names == ["b", "d"]
    originals = {bytes(a.tobytes()): i % 4 for i, a in enumerate(source.images)}
    assert [originals[bytes(x.numpy().tobytes())] for x in train.images] == [[1, 3][y] for y in train.labels]
