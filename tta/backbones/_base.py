"""The frozen-encoder interface and the image preprocessing shared by every backbone.

A :class:`Backbone` maps a preprocessed batch (images ``(B, C, H, W)``; for a text backbone a dict of
token tensors) to penultimate features ``(B, d)``. It is frozen: no parameter requires a gradient, it
stays in eval mode whatever ``train()`` is asked, and its forward runs without autograd.

Its :meth:`Backbone.preprocess` returns a :class:`Preprocess`: a picklable callable whose
:meth:`~Preprocess.batch` maps a chunk of a dataset's raw inputs (a slice of its uint8 image tensor, or a
``list[str]`` of texts) to what :meth:`Backbone.forward` takes, and whose :meth:`~Preprocess.config`
is part of the feature-cache key. For images it is an :class:`ImagePreprocess`, taking one image
(uint8 tensor ``(H, W)`` / ``(H, W, C)``, numpy array or PIL image) to a float ``(C, H, W)`` tensor,
with a fast :meth:`ImagePreprocess.batch` path for a whole uint8 batch. Its resize, crop and
normalisation replay timm's evaluation transform (``timm.data.create_transform(is_training=False)``)
on tensors, with the values of the model's timm data config (``timm.data.resolve_data_config``).

Backbones that keep the classifier of their source task (ImageNet for the timm models) expose it for the
estimators that need source logits (LEEP, NCE): :attr:`Backbone.num_source_classes`,
:meth:`Backbone.classifier_logits` (head applied to features) and :meth:`Backbone.source_logits`.
"""

from __future__ import annotations

import abc
import hashlib
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from tta.errors import TTAError, TTAInputError

__all__ = [
    "Backbone",
    "ImagePreprocess",
    "NoSourceHeadError",
    "Preprocess",
    "WeightsFileNotFoundError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "file_sha256",
    "read_state_dict",
]

#: Interpolation modes the tensor pipeline reproduces; others fall back to timm's PIL transform.
_TENSOR_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


class WeightsMismatchError(TTAInputError):
    """A weights file does not fit the architecture it is loaded into."""


class WeightsFileNotFoundError(TTAInputError, FileNotFoundError):
    """A weights file named in the configuration does not exist."""


class WeightsUnavailableError(TTAError, RuntimeError):
    """Pretrained weights cannot be obtained (no network, missing package or file)."""


class NoSourceHeadError(TTAError, RuntimeError):
    """The backbone keeps no classifier of its source task (no source logits)."""


@runtime_checkable
class Preprocess(Protocol):
    """What :meth:`Backbone.preprocess` returns: picklable, applied per chunk of raw inputs."""

    def batch(self, inputs: Any) -> Any:
        """Map a chunk of raw inputs (uint8 images ``(B, H, W[, C])`` or ``list[str]``) to a forward input."""

    def config(self) -> dict[str, Any]:
        """JSON-able configuration, part of the feature cache key."""


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, memoised per (path, size, mtime).

    Args:
        path: The file.

    Returns:
        The lowercase hex digest.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _SHA256_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_CACHE[memo] = h.hexdigest()
    return _SHA256_CACHE[memo]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` or a torch (``.pth``/``.pt``/``.bin``) file.

    A checkpoint wrapping its weights under ``state_dict``, ``model`` or ``state_dict_ema`` is unwrapped.

    Args:
        path: The weights file.

    Returns:
        The tensors by name, on the CPU.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        WeightsMismatchError: If the file holds no mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsFileNotFoundError(
            f"weights file not found: {p}; check the path (relative paths start at the working directory)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        obj: Any = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        from tta._preflight import refused_global

        needed = refused_global(err)
        raise WeightsMismatchError(
            f"the weights file {p} holds objects other than tensors (it needs {needed}): not loaded; save "
            "the state dict alone (torch.save(model.state_dict(), path)) or as .safetensors"
            if needed
            else f"cannot read the weights file {p} as a torch (.pth/.pt/.bin) file (not a readable "
            "checkpoint); it is truncated, corrupt, or in another format: download or export it again"
        ) from None
    except Exception as err:  # truncated, corrupt, or not a weights file at all
        kind = "safetensors" if p.suffix == ".safetensors" else "torch (.pth/.pt/.bin)"
        raise WeightsMismatchError(
            f"cannot read the weights file {p} as a {kind} file ({type(err).__name__}: {err}); it is "
            "truncated, corrupt, or in another format: download or export it again"
        ) from err
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsMismatchError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


@dataclass(frozen=True)
class ImagePreprocess:
    """Evaluation preprocessing of a timm model, on tensors.

    Replays ``timm.data.create_transform(**data_config, is_training=False)``: resize to
    ``floor(size / crop_pct)`` (shortest edge for ``crop_mode="center"``, both edges for ``"squash"``,
    longest edge plus padding for ``"border"``), centre crop to ``input_size``, scale to [0, 1],
    normalise by ``mean``/``std``. An alpha channel is dropped. For a 3-channel network input, grayscale
    images are replicated to 3 channels (after the resize, which is then 3× cheaper); for a 1-channel
    input (``input_size = (1, H, W)``, e.g. the small CNN on 28×28 digits) colour images are converted to
    grayscale first (ITU-R 601-2 luma, as PIL's ``convert("L")``).

    Args:
        input_size: ``(C, H, W)`` of the network input; ``C`` is 3 (colour) or 1 (grayscale).
        interpolation: timm interpolation name (``"bicubic"``, ``"bilinear"``, ...). Modes torch cannot
            reproduce (``"lanczos"``, ``"box"``, ``"hamming"``) fall back to timm's PIL transform.
        crop_pct: Fraction of the resized image kept by the centre crop.
        crop_mode: ``"center"``, ``"squash"`` or ``"border"``, as in timm.
        mean: Per-channel mean on the [0, 1] scale (``C`` values).
        std: Per-channel standard deviation on the [0, 1] scale (``C`` values).
    """

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        c = self.input_size[0] if len(self.input_size) == 3 else None
        if c not in (1, 3):
            raise TTAInputError(
                f"expected input_size (C, H, W) with C = 3 (colour) or 1 (grayscale), got {self.input_size}"
            )
        if len(self.mean) != c or len(self.std) != c:
            raise TTAInputError(
                f"mean {self.mean} and std {self.std} must have one value per channel ({c} for "
                f"input_size {self.input_size})"
            )

    @classmethod
    def from_data_config(cls, config: Mapping[str, Any]) -> ImagePreprocess:
        """Build from a timm data config (the output of ``timm.data.resolve_data_config``).

        Args:
            config: Keys ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``,
                ``std``; missing ``crop_pct``/``crop_mode`` take timm's defaults (0.875, center).

        Returns:
            The preprocessing.
        """
        input_size = tuple(int(v) for v in config["input_size"])
        return cls(
            input_size=input_size,  # type: ignore[arg-type]
            interpolation=str(config.get("interpolation") or "bilinear"),
            crop_pct=float(config.get("crop_pct") or 0.875),
            crop_mode=str(config.get("crop_mode") or "center"),
            mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
        )

    @classmethod
    def from_timm_model(cls, model: torch.nn.Module, image_size: int | None = None) -> ImagePreprocess:
        """Resolve the timm data config of ``model``, optionally at another square resolution.

        Args:
            model: A timm model (its ``pretrained_cfg`` supplies the values).
            image_size: Side of the square network input; ``None`` keeps the model's default.

        Returns:
            The preprocessing.
        """
        from timm.data import resolve_data_config

        args: dict[str, Any] = {} if image_size is None else {"input_size": (3, image_size, image_size)}
        return cls.from_data_config(resolve_data_config(args, model=model))

    def config(self) -> dict[str, Any]:
        """The JSON-able configuration (part of the feature cache key)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def timm_transform(self) -> Any:
        """The (PIL-based) timm evaluation transform with the same values; the reference pipeline."""
        from timm.data import create_transform

        return create_transform(
            input_size=self.input_size,
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )

    def __call__(self, image: Any) -> Tensor:
        """Preprocess one image.

        Args:
            image: A PIL image, or a uint8 (or [0, 1] float) tensor / numpy array of shape ``(H, W)``
                or ``(H, W, C)`` with C in {1, 3, 4}.

        Returns:
            A float32 tensor ``(C, H, W)`` with ``C = input_size[0]``.
        """
        return self.batch(_to_hwc_tensor(image)[None])[0]

    def batch(self, images: Tensor) -> Tensor:
        """Preprocess a batch of same-sized images.

        Args:
            images: uint8 (or [0, 1] float) tensor ``(B, H, W)`` or ``(B, H, W, C)``, C in {1, 3, 4}.

        Returns:
            A float32 tensor ``(B, C, H', W')`` with ``(C, H', W') == input_size``, on the device of
            ``images``.
        """
        x = _to_bchw(images)
        channels = self.input_size[0]
        if channels == 1 and x.shape[1] == 3:
            x = _rgb_to_gray(x)
        if self.interpolation not in _TENSOR_INTERPOLATIONS:
            return self._batch_pil(x)
        import torchvision.transforms.v2.functional as TF

        _, out_h, out_w = self.input_size
        scale_h, scale_w = math.floor(out_h / self.crop_pct), math.floor(out_w / self.crop_pct)
        mode = TF.InterpolationMode(self.interpolation)
        h, w = x.shape[-2:]
        if self.crop_mode == "squash":
            x = TF.resize(x, [scale_h, scale_w], interpolation=mode, antialias=True)
        elif self.crop_mode == "border":
            ratio = min(scale_h / h, scale_w / w)
            x = TF.resize(x, [round(h * ratio), round(w * ratio)], interpolation=mode, antialias=True)
        elif scale_h == scale_w:  # torchvision Resize(int): shortest edge
            x = TF.resize(x, [scale_h], interpolation=mode, antialias=True)
        else:  # timm ResizeKeepRatio(longest=0): cover the target
            ratio = max(scale_h / h, scale_w / w)
            x = TF.resize(x, [round(h * ratio), round(w * ratio)], interpolation=mode, antialias=True)
        x = self._center_crop_or_pad(x, out_h, out_w)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
        return ((x - mean) / std).contiguous()

    def _center_crop_or_pad(self, x: Tensor, out_h: int, out_w: int) -> Tensor:
        import torchvision.transforms.v2.functional as TF

        h, w = x.shape[-2:]
        if h >= out_h and w >= out_w:
            return TF.center_crop(x, [out_h, out_w])
        # pad with the mean colour, as timm's CenterCropOrPad does
        pad_h, pad_w = max(out_h - h, 0), max(out_w - w, 0)
        padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]
        if x.shape[1] != len(self.mean):
            x = x.expand(-1, len(self.mean), -1, -1)
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        channels = [
            TF.pad(x[:, c : c + 1], padding, fill=round(m * scale) if scale > 1 else m)
            for c, m in enumerate(self.mean)
        ]
        return TF.center_crop(torch.cat(channels, dim=1), [out_h, out_w])

    def _batch_pil(self, x: Tensor) -> Tensor:
        from PIL import Image

        transform = self.timm_transform()
        out = []
        for img in x:
            if img.dtype != torch.uint8:
                img = (img * 255).round().clamp(0, 255).to(torch.uint8)
            arr = img.permute(1, 2, 0).cpu().numpy()
            mode = "L" if self.input_size[0] == 1 else "RGB"
            pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert(mode)
            out.append(transform(pil))
        return torch.stack(out).to(x.device)


def _rgb_to_gray(x: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB to ``(B, 1, H, W)`` luma (ITU-R 601-2), keeping a uint8 input uint8."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    gray = (x.float() * weights).sum(dim=1, keepdim=True)
    if x.dtype == torch.uint8:
        return gray.round_().clamp_(0, 255).to(torch.uint8)
    return gray


def _to_hwc_tensor(image: Any) -> Tensor:
    """One image as an ``(H, W)`` or ``(H, W, C)`` tensor."""
    if isinstance(image, Tensor):
        return image
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with torchvision
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return torch.from_numpy(np.asarray(image).copy())
    raise TypeError(f"expected a PIL image, a numpy array or a tensor, got {type(image).__name__}")


def _to_bchw(images: Tensor) -> Tensor:
    """A ``(B, H, W)`` / ``(B, H, W, C)`` batch as ``(B, C, H, W)`` with C in {1, 3}."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise TTAInputError(f"expected images of shape (B, H, W) or (B, H, W, C), got {tuple(images.shape)}")
    c = images.shape[-1]
    if c == 4:
        images = images[..., :3]
    elif c not in (1, 3):
        raise TTAInputError(f"expected 1, 3 or 4 channels last, got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2)


class Backbone(torch.nn.Module, abc.ABC):
    """A frozen encoder (of images, or of texts) returning penultimate features.

    Subclasses build their network in ``__init__``, set :attr:`feature_dim` and :attr:`name`, then call
    :meth:`freeze`. The backbone always stays in eval mode: ``train(True)`` is ignored.

    A backbone that keeps the classifier of its source task registers it as the submodule
    ``classifier_head`` (mapping features ``(B, d)`` to source logits, see :attr:`source_head`).

    Attributes:
        feature_dim: ``d``, the width of the penultimate features.
        name: The backbone's name in the cache key (e.g. ``"efficientnet_lite0"``, ``"timm/resnet50"``).
    """

    feature_dim: int
    name: str

    @property
    def source_head(self) -> torch.nn.Module | None:
        """The source-task classifier (the submodule ``classifier_head``), or ``None``."""
        return self._modules.get("classifier_head")

    @staticmethod
    def channels_last(module: torch.nn.Module, x: Tensor) -> Tensor:
        """Run ``module`` on ``x`` in channels-last layout (oneDNN's fast path for convolutions on CPU).

        Args:
            module: A convolutional network already converted with
                ``module.to(memory_format=torch.channels_last)``.
            x: ``(B, C, H, W)`` input.

        Returns:
            ``module(x)``.
        """
        return module(x.contiguous(memory_format=torch.channels_last))

    @abc.abstractmethod
    def forward(self, x: Any) -> Tensor:
        """Penultimate features of a preprocessed batch.

        Args:
            x: The output of ``preprocess().batch(chunk)``: a float tensor ``(B, C, H, W)`` for an image
                backbone, a dict of ``(B, L)`` token tensors for a text backbone.

        Returns:
            Float tensor ``(B, d)``.
        """

    @abc.abstractmethod
    def preprocess(self) -> Preprocess:
        """The picklable preprocessing whose ``batch`` maps raw inputs to what :meth:`forward` takes."""

    @property
    def num_source_classes(self) -> int:
        """Number of classes of the source-task classifier (0 when the backbone keeps none)."""
        head = self.source_head
        if head is None:
            return 0
        out = getattr(head, "out_features", None)
        if out is None:
            with torch.no_grad():
                p = next(iter(head.parameters()), None)
                probe = torch.zeros(1, self.feature_dim, device=None if p is None else p.device)
                out = head(probe).shape[-1]
        return int(out)

    @torch.no_grad()
    def classifier_logits(self, features: Tensor) -> Tensor:
        """Source-task logits of already computed features (the original classifier head).

        Args:
            features: ``(B, d)`` outputs of :meth:`forward`.

        Returns:
            ``(B, num_source_classes)`` logits.

        Raises:
            NoSourceHeadError: If the backbone keeps no source classifier.
        """
        head = self.source_head
        if head is None:
            raise NoSourceHeadError(
                f"backbone {self.name!r} has no source-task classifier head, so it gives no source logits "
                "(needed by LEEP/NCE); use a backbone with its original head, e.g. `efficientnet_lite0` or "
                "`timm/<model>` with pretrained weights (ImageNet head), or a trained `small_cnn`"
            )
        return head(features)

    @torch.no_grad()
    def source_logits(self, x: Any) -> Tensor:
        """Source-task logits of a preprocessed batch: the original head on :meth:`forward`'s features.

        Args:
            x: A preprocessed batch, as for :meth:`forward`.

        Returns:
            ``(B, num_source_classes)`` logits.

        Raises:
            NoSourceHeadError: If the backbone keeps no source classifier.
        """
        return self.classifier_logits(self.forward(x))

    @abc.abstractmethod
    def weights_fingerprint(self) -> str:
        """SHA-256 of the weights file, or ``"random-init"``."""

    def cache_key(self) -> dict[str, Any]:
        """JSON-able identity of the features this backbone computes.

        Returns:
            ``{"backbone": name, "weights": fingerprint, "preprocess": {...}}``.
        """
        return {
            "backbone": self.name,
            "weights": self.weights_fingerprint(),
            "preprocess": self.preprocess().config(),
        }

    def freeze(self) -> None:
        """Switch off gradients and put the module in eval mode (for good)."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Keep eval mode: a frozen backbone never trains (batch-norm statistics stay fixed).

        Args:
            mode: Ignored.

        Returns:
            ``self``.
        """
        return super().train(False)

    def extra_repr(self) -> str:
        """Name and feature width, shown by ``repr``."""
        return f"name={self.name!r}, feature_dim={self.feature_dim}"


class TimmFeatureBackbone(Backbone):
    """Shared body of the backbones built on a timm model: pooled penultimate features, timm preprocessing.

    Subclasses build the timm model, with its classifier when it has one, and call :meth:`_wrap`, which
    keeps that classifier as :attr:`classifier_head` and removes it from the model
    (``reset_classifier(0)``): :meth:`forward` gives the pooled penultimate features, and
    ``classifier_head(forward(x))`` the model's original logits.
    """

    model: torch.nn.Module
    _preprocess: ImagePreprocess

    def _wrap(self, model: torch.nn.Module, name: str, image_size: int | None) -> None:
        """Take the classifier out of ``model``, adopt it (channels-last, ~1.5x faster on CPU) and freeze."""
        if int(getattr(model, "num_classes", 0) or 0) > 0:
            self.classifier_head = model.get_classifier()
            model.reset_classifier(0)
        self.model = model.to(memory_format=torch.channels_last)
        self.name = name
        self.feature_dim = int(model.num_features)
        self._preprocess = ImagePreprocess.from_timm_model(model, image_size)
        self.freeze()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Pooled penultimate features.

        Args:
            x: ``(B, 3, H, W)`` preprocessed images.

        Returns:
            ``(B, d)`` features.
        """
        return self.channels_last(self.model, x)

    def preprocess(self) -> ImagePreprocess:
        """The model's timm evaluation preprocessing at the configured image size."""
        return self._preprocess
