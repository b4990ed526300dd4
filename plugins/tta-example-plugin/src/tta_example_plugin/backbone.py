"""Any torchvision classification model as a frozen tta backbone (its penultimate features).

Registered as the provider ``torchvision``: ``backbone: torchvision/resnet18`` (or
``torchvision/mobilenet_v3_small``, ``torchvision/convnext_tiny``...) builds
:class:`TorchvisionBackbone` with that ``arch``. The classifier (the model's last ``nn.Linear``) is
replaced by the identity, so the features are the inputs of that layer: 512-d for ResNet-18.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tta.backbones import (
    Backbone,
    ImagePreprocess,
    WeightsMismatchError,
    WeightsUnavailableError,
    file_sha256,
    read_state_dict,
)

__all__ = ["TorchvisionBackbone", "preprocess_for_weights"]

#: torchvision's ImageNet evaluation transform for models without weights: resize 256, crop 224.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_for_weights(weights: Any | None, image_size: int | None = None) -> ImagePreprocess:
    """The tensor preprocessing replaying a torchvision weights' evaluation transform.

    torchvision's ``ImageClassification`` transform resizes the shortest edge to ``resize_size``,
    centre-crops ``crop_size`` and normalises; that is :class:`~tta.backbones.ImagePreprocess` with
    ``crop_pct = crop_size / resize_size``.

    Args:
        weights: A torchvision ``WeightsEnum`` member, or ``None`` for torchvision's ImageNet default
            (bilinear, resize 256, crop 224, ImageNet mean/std).
        image_size: Side of the square network input; default: the weights' crop size.

    Returns:
        The preprocessing.
    """
    crop, resize, mean, std, interpolation = 224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    if weights is not None:
        t = weights.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        interpolation = str(t.interpolation.value)
    size = crop if image_size is None else int(image_size)
    return ImagePreprocess(
        input_size=(3, size, size),
        interpolation=interpolation,
        crop_pct=crop / resize,
        crop_mode="center",
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Qualified name and module of the last ``nn.Linear`` (the classifier) of a torchvision model."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier to remove (e.g. SqueezeNet's classifier is "
            "a convolution): choose another architecture"
        )
    return found[-1]


def _replace(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, attr = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


class TorchvisionBackbone(Backbone):
    """A torchvision classification model's penultimate features, frozen.

    Without weights the model is randomly initialised from ``init_seed`` (reproducible, and part of
    the feature cache key); ``weights`` downloads torchvision's pretrained weights once (network
    needed, then cached in the torch hub directory); ``weights_path`` reads a local state dict.

    Args:
        arch: A torchvision classification model (``torchvision.models.list_models(module=
            torchvision.models)``), e.g. ``"resnet18"``. As a tta provider, ``torchvision/<arch>``.
        weights: torchvision weights name, e.g. ``"DEFAULT"`` or ``"IMAGENET1K_V1"``; its evaluation
            preprocessing is used.
        weights_path: A local ``.pth``/``.safetensors`` state dict in torchvision's format, with or
            without the classifier.
        image_size: Side of the square network input; default: the weights' crop size (224).
        init_seed: Seed of the random initialisation (used when no weights are given).
    """

    #: ``torchvision/<arch>`` passes ``<arch>`` as this keyword (the tta provider protocol).
    tta_provider_arg: ClassVar[str] = "arch"

    def __init__(
        self,
        arch: str = "resnet18",
        weights: str | None = None,
        weights_path: str | None = None,
        image_size: int | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        from torchvision import models

        available = models.list_models(module=models)
        if arch not in available:
            close = difflib.get_close_matches(arch, available, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"Unknown torchvision classification model {arch!r}.{hint} "
                "See torchvision.models.list_models(module=torchvision.models)."
            )
        if weights is not None and weights_path is not None:
            raise ValueError(
                "give weights (torchvision's pretrained) or weights_path (a local file), not both"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = models.get_model(arch, weights=None)
        head_name, head = _last_linear(model)
        enum = None
        self.weights_file: Path | None = None
        if weights is not None:
            enum = models.get_weight(f"{models.get_model_weights(arch).__name__}.{weights}")
            model.load_state_dict(self._download(enum, arch))
        _replace(model, head_name, nn.Identity())
        if weights_path is not None:
            self.weights_file = Path(weights_path)
            self._load_file(model, head_name, self.weights_file, arch)
        self.model = model.to(memory_format=torch.channels_last)
        self.arch = arch
        self.init_seed = init_seed
        self.name = f"torchvision/{arch}"
        self._preprocess = preprocess_for_weights(enum, image_size)
        self.freeze()
        self.feature_dim = self._probe_dim(head.in_features)

    def _download(self, enum: Any, arch: str) -> dict[str, Tensor]:
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # URLError, HTTPError, socket errors, hash mismatch
            raise WeightsUnavailableError(
                f"cannot obtain torchvision weights {enum} for {arch!r} ({err!r}): they are not in the torch "
                f"hub cache ({torch.hub.get_dir()}/checkpoints) and the download failed. Download "
                f"{enum.url} once on a machine with network and pass `weights_path`, or use the random "
                "initialisation (no `weights`)."
            ) from err
        self.weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        return state

    @staticmethod
    def _load_file(model: nn.Module, head_name: str, path: Path, arch: str) -> None:
        state = read_state_dict(path)
        state = {k: v for k, v in state.items() if not k.startswith(f"{head_name}.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsMismatchError(
                f"weights file {path} does not fit torchvision {arch!r}: {err}"
            ) from err

    @torch.no_grad()
    def _probe_dim(self, expected: int) -> int:
        _, h, w = self._preprocess.input_size
        try:
            out = self.forward(torch.zeros(1, 3, h, w))
        except RuntimeError as err:
            raise ValueError(f"torchvision {self.arch!r} does not run at image_size {h}: {err}") from err
        if out.ndim != 2:
            raise ValueError(
                f"torchvision {self.arch!r} returns features of shape {tuple(out.shape)} without its "
                "classifier, not (batch, dim): choose another architecture"
            )
        if int(out.shape[1]) != expected:  # pragma: no cover - a head after the last Linear
            return int(out.shape[1])
        return expected

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Penultimate features.

        Args:
            x: ``(B, 3, H, W)`` preprocessed images.

        Returns:
            ``(B, d)`` features.
        """
        return self.channels_last(self.model, x)

    def preprocess(self) -> ImagePreprocess:
        """The evaluation preprocessing of torchvision (of the weights, or the ImageNet default)."""
        return self._preprocess

    def weights_fingerprint(self) -> str:
        """SHA-256 of the weights file (of the tensors if it is gone), or ``random-init:seed=<init_seed>``."""
        if self.weights_file is None:
            return f"random-init:seed={self.init_seed}"
        if self.weights_file.is_file():
            return file_sha256(self.weights_file)
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return "tensors:" + h.hexdigest()
