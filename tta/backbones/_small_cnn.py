"""The small CNN of the paper's small-scale experiments, as a frozen backbone ``small_cnn`` (d = 200).

Mehra et al. bound transferability on MNIST / Fashion-MNIST / KMNIST / USPS with a small network: two
convolutional layers and a 200-unit dense layer. :class:`SmallCNNNet` is that network::

    conv1: Conv2d(1, 32, 5) -> ReLU -> MaxPool2d(2)
    conv2: Conv2d(32, 64, 5) -> ReLU -> MaxPool2d(2)
    fc:    Linear(64·s'·s', 200) -> ReLU        <- the features (s' = ((size - 4) // 2 - 4) // 2; 4 at 28)
    classifier: Linear(200, K)                  <- the reference-task head, used while training

It works on 1-channel images (``size``×``size``, 28 by default), scaled to [0, 1] and normalised by
``(x - mean) / std``. It is trained on a reference task with :class:`tta.modules.SmallCNNClassifier`
(``tta fit`` config: ``configs/small_cnn/``), which writes a ``.safetensors`` weights file holding the
network's tensors and, as metadata, its preprocessing (``image_size``, ``mean``, ``std``);
:class:`SmallCNN` loads that file as a frozen backbone whose features are the 200-d ``fc`` layer and
whose source head is the trained ``classifier``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tta._atomic import atomic_path
from tta.backbones._base import (
    Backbone,
    ImagePreprocess,
    WeightsMismatchError,
    file_sha256,
    read_state_dict,
)
from tta.errors import TTAInputError
from tta.plugins import BACKBONES

__all__ = [
    "SMALL_CNN_FORMAT",
    "SmallCNN",
    "SmallCNNNet",
    "read_small_cnn_metadata",
    "save_small_cnn_weights",
    "small_cnn_preprocess",
]

#: Value of the ``format`` metadata entry of the weights files written by :func:`save_small_cnn_weights`.
SMALL_CNN_FORMAT = "tta.small_cnn/1"
HIDDEN = 200
_DEFAULTS: dict[str, Any] = {"image_size": 28, "mean": 0.5, "std": 0.5}


def _flat_side(image_size: int) -> int:
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise TTAInputError(
            f"image_size must be at least 16 for the small CNN (two 5x5 convs, two 2x2 pools), "
            f"got {image_size}"
        )
    return side


class SmallCNNNet(torch.nn.Module):
    """Two conv layers and a 200-d dense layer, plus an optional classifier (see the module docstring).

    Args:
        image_size: Side of the square 1-channel input.
        num_classes: Outputs of the classifier layer; 0 builds none (features only).
    """

    def __init__(self, image_size: int = 28, num_classes: int = 0) -> None:
        super().__init__()
        side = _flat_side(image_size)
        self.image_size = int(image_size)
        self.conv1 = torch.nn.Conv2d(1, 32, kernel_size=5)
        self.conv2 = torch.nn.Conv2d(32, 64, kernel_size=5)
        self.fc = torch.nn.Linear(64 * side * side, HIDDEN)
        self.classifier: torch.nn.Linear | None = (
            torch.nn.Linear(HIDDEN, num_classes) if num_classes > 0 else None
        )

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier (0 without one)."""
        return 0 if self.classifier is None else int(self.classifier.out_features)

    def features(self, x: Tensor) -> Tensor:
        """The 200-d penultimate features (after the ReLU of ``fc``).

        Args:
            x: ``(B, 1, image_size, image_size)`` normalised images.

        Returns:
            ``(B, 200)``.
        """
        f = torch.nn.functional
        x = f.max_pool2d(f.relu(self.conv1(x)), 2)
        x = f.max_pool2d(f.relu(self.conv2(x)), 2)
        return f.relu(self.fc(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: ``(B, 1, image_size, image_size)`` normalised images.

        Returns:
            ``(B, num_classes)`` logits.

        Raises:
            RuntimeError: If the network has no classifier.
        """
        if self.classifier is None:
            raise RuntimeError("this SmallCNNNet has no classifier (num_classes=0): use .features(x)")
        return self.classifier(self.features(x))


def small_cnn_preprocess(image_size: int = 28, mean: float = 0.5, std: float = 0.5) -> ImagePreprocess:
    """The small CNN's input pipeline: grayscale, resize to ``image_size`` (no crop), ``(x - mean) / std``.

    Args:
        image_size: Side of the square network input.
        mean: Mean on the [0, 1] scale.
        std: Standard deviation on the [0, 1] scale.

    Returns:
        A 1-channel :class:`~tta.backbones.ImagePreprocess` (a 28×28 input is left as it is; colour
        images are converted to grayscale).
    """
    if std <= 0:
        raise TTAInputError(f"std must be positive, got {std}")
    return ImagePreprocess(
        input_size=(1, int(image_size), int(image_size)),
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
        mean=(float(mean),),
        std=(float(std),),
    )


def save_small_cnn_weights(
    net: SmallCNNNet,
    path: str | os.PathLike[str],
    mean: float,
    std: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a :class:`SmallCNNNet` as ``.safetensors`` with its preprocessing as metadata.

    Args:
        net: The network.
        path: Destination (``.safetensors``); parent folders are created.
        mean: Normalisation mean the network was trained with.
        std: Normalisation standard deviation the network was trained with.
        extra: More JSON-able metadata (e.g. the reference task), stored under ``"tta"``.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise TTAInputError(
            f"weights are written as safetensors: give a path ending in .safetensors, got {p}"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {
        "format": SMALL_CNN_FORMAT,
        "image_size": str(net.image_size),
        "mean": repr(float(mean)),
        "std": repr(float(std)),
        "num_classes": str(net.num_classes),
        "tta": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return p


def read_small_cnn_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The preprocessing stored in a small-CNN weights file (empty for a ``.pth`` or a foreign file).

    Args:
        path: The weights file.

    Returns:
        ``{"image_size": int, "mean": float, "std": float}`` when the file was written by
        :func:`save_small_cnn_weights`, else ``{}``.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != SMALL_CNN_FORMAT:
        return {}
    return {"image_size": int(meta["image_size"]), "mean": float(meta["mean"]), "std": float(meta["std"])}


def _load_net(state_dict: dict[str, Tensor], image_size: int, source: Path) -> SmallCNNNet:
    """Build a :class:`SmallCNNNet` from a state dict, checking every tensor by name and shape."""
    head = state_dict.get("classifier.weight")
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 0
    net = SmallCNNNet(image_size, num_classes)
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise WeightsMismatchError(
                f"weights {source} do not fit the small CNN: tensor {key!r} {tuple(tensor.shape)} is missing "
                f"(the file has {sorted(state_dict)})"
            )
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            hint = (
                " (the dense layer's width depends on the input size: set image_size to the size the "
                "network was trained at)"
                if key == "fc.weight"
                else ""
            )
            raise WeightsMismatchError(
                f"weights {source} do not fit the small CNN at image_size={image_size}: tensor {key!r} is "
                f"{tuple(state_dict[key].shape)} in the file but {tuple(tensor.shape)} in the model{hint}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise WeightsMismatchError(
            f"weights {source} do not fit the small CNN: unexpected tensor {unexpected[0]!r} "
            f"{tuple(state_dict[unexpected[0]].shape)} (and {len(unexpected) - 1} more); expected only "
            f"{sorted(expected)}"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()})
    return net


@BACKBONES.register("small_cnn")
class SmallCNN(Backbone):
    """A trained small CNN (two conv layers + 200-d dense), frozen; d = 200.

    The features are the 200-d dense layer (after its ReLU); the trained classifier, when the file holds
    it, is the source head (``source_logits``, ``num_source_classes``).

    Args:
        weights_path: The network's weights (``.safetensors`` written by ``tta fit`` with
            :class:`tta.modules.SmallCNNClassifier`, or a ``.pth``/``.safetensors`` state dict with the
            keys ``conv1.*``, ``conv2.*``, ``fc.*`` and optionally ``classifier.*``).
        image_size: Side of the square network input; default: the value stored in the weights file, else
            28.
        mean: Normalisation mean on the [0, 1] scale; default: stored in the file, else 0.5.
        std: Normalisation standard deviation; default: stored in the file, else 0.5.

    Raises:
        FileNotFoundError: If ``weights_path`` does not exist.
        WeightsMismatchError: If a tensor of the file is missing, extra, or of the wrong shape (named).
        ValueError: If an explicit ``image_size``/``mean``/``std`` contradicts the one stored in the file.
    """

    def __init__(
        self,
        weights_path: str,
        image_size: int | None = None,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        super().__init__()
        path = Path(weights_path)
        state_dict = read_state_dict(path)
        stored = read_small_cnn_metadata(path)
        given = {"image_size": image_size, "mean": mean, "std": std}
        for key, value in given.items():
            if value is not None and key in stored and float(value) != float(stored[key]):
                raise TTAInputError(
                    f"{key}={value} contradicts the {key}={stored[key]} the small CNN in {path} was trained "
                    f"with; leave {key} unset to use the stored value"
                )
        values = {k: given[k] if given[k] is not None else stored.get(k, _DEFAULTS[k]) for k in given}
        net = _load_net(state_dict, int(values["image_size"]), path)
        if net.classifier is not None:
            self.classifier_head = net.classifier
            net.classifier = None
        self.net = net
        self.weights_path = path
        self.name = "small_cnn"
        self.feature_dim = HIDDEN
        self._preprocess = small_cnn_preprocess(int(values["image_size"]), values["mean"], values["std"])
        self.freeze()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """The 200-d dense-layer features.

        Args:
            x: ``(B, 1, H, W)`` preprocessed images.

        Returns:
            ``(B, 200)`` features.
        """
        return self.net.features(x)

    def preprocess(self) -> ImagePreprocess:
        """Grayscale ``image_size``×``image_size``, normalised (see :func:`small_cnn_preprocess`)."""
        return self._preprocess

    def weights_fingerprint(self) -> str:
        """SHA-256 of the weights file."""
        return file_sha256(self.weights_path)
