"""The source classifier head of the timm backbones (source logits for LEEP/NCE)."""

from __future__ import annotations

import pytest
import torch

from tta.backbones import EfficientNetLite0, NoSourceHeadError, TimmBackbone

timm = pytest.importorskip("timm")

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 40, 50, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("model_name", ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"])
def test_head_on_features_is_the_original_model(tmp_path, model_name):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=7).eval()
    path = tmp_path / f"{model_name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    bb = TimmBackbone(model_name, weights_path=str(path))
    x = bb.preprocess().batch(_images())
    with torch.no_grad():
        original = model(x)
        model.reset_classifier(0)  # the `num_classes=0` penultimate features
        penultimate = model(x)
    features = bb(x)
    assert bb.num_source_classes == 7 and features.shape == penultimate.shape
    torch.testing.assert_close(features, penultimate, atol=1e-5, rtol=1e-5)
    logits = bb.classifier_logits(features)
    assert torch.equal(logits, bb.source_head(features))  # exactly the head on the features
    torch.testing.assert_close(logits, original, atol=1e-5, rtol=1e-5)
    assert torch.equal(bb.source_logits(x), logits)


def test_no_head_without_one(tmp_path):
    from safetensors.torch import save_file

    random_init = TimmBackbone("test_resnet")
    assert random_init.num_source_classes == 0 and random_init.source_head is None
    with pytest.raises(NoSourceHeadError, match=r"timm/test_resnet.*LEEP/NCE"):
        random_init.source_logits(random_init.preprocess().batch(_images(1)))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert TimmBackbone("test_resnet", weights_path=str(path)).num_source_classes == 0


@pytest.fixture(scope="module")
def lite() -> EfficientNetLite0:
    return EfficientNetLite0(image_size=224)


def test_efficientnet_lite0_imagenet_head(lite):
    skimage_data = pytest.importorskip("skimage.data")
    assert lite.num_source_classes == 1000 and lite.feature_dim == 1280
    x = lite.preprocess().batch(torch.from_numpy(skimage_data.chelsea().copy())[None])
    features = lite(x)
    logits = lite.classifier_logits(features)
    head = lite.source_head
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == (1000, 1280)
    assert torch.equal(logits, torch.nn.functional.linear(features, head.weight, head.bias))
    assert torch.equal(lite.source_logits(x), logits) and torch.equal(lite.classify(x), logits)
    assert int(logits.argmax()) in CAT_CLASSES
    # the head is frozen with the rest, and not part of the features
    assert not any(p.requires_grad for p in head.parameters())
