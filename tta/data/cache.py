"""On-disk cache of extracted features.

An entry is two files in the cache root:

- ``<key>.safetensors``: tensors ``features`` (N, d) float32 and ``labels`` (N,) int64;
- ``<key>.json``: the manifest: format version, key, shapes, dtypes, the SHA-256 of the safetensors file,
  and free-form ``meta`` (backbone, task, timings).

Both are written atomically (temporary file in the same directory, then ``os.replace``), the manifest
last and any old manifest removed first, so a reader sees a complete entry or none. :meth:`FeatureCache.load`
checks the manifest, the checksum and the shapes; a corrupt or partial entry gives a warning and a miss,
and is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tta.data.tasks import TaskSpec

__all__ = ["CACHE_FORMAT_VERSION", "FeatureCache", "default_cache_dir"]

#: Bump when the meaning of cached features changes (invalidates every entry).
CACHE_FORMAT_VERSION = 1

#: ``dataset_kwargs`` that do not change the data (left out of the key).
_NON_DATA_KWARGS = frozenset({"download"})


def default_cache_dir() -> Path:
    """``$TTA_CACHE_DIR``, else ``~/.cache/tta/features``."""
    env = os.environ.get("TTA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tta" / "features"


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final``, moved onto it on success and removed on failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


class FeatureCache:
    """Cache of ``(features, labels)`` per backbone, task and split.

    Args:
        root: Directory of the cache; default ``$TTA_CACHE_DIR`` or ``~/.cache/tta/features``.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r})"

    @staticmethod
    def key_payload(backbone_key: dict[str, Any], task_spec: TaskSpec, split: str) -> dict[str, Any]:
        """What the key hashes: format version, backbone identity, task fields that select the data, split.

        Only the cap of ``split`` enters (changing the train cap keeps the test features).
        """
        spec = asdict(task_spec)
        kwargs = {k: v for k, v in (spec.get("dataset_kwargs") or {}).items() if k not in _NON_DATA_KWARGS}
        cap = spec["train_per_class"] if split == "train" else spec["test_per_class"]
        return {
            "format": CACHE_FORMAT_VERSION,
            "backbone": backbone_key,
            "task": {
                "dataset": spec["dataset"],
                "dataset_kwargs": kwargs,
                "classes": spec["classes"],
                "per_class": cap,
                "test_fraction": spec["test_fraction"],
                "seed": spec["seed"],
            },
            "split": split,
        }

    def key(self, backbone_key: dict[str, Any], task_spec: TaskSpec, split: str) -> str:
        """SHA-256 hex key of an entry.

        Args:
            backbone_key: :meth:`tta.backbones.Backbone.cache_key` (name, weights fingerprint,
                preprocessing).
            task_spec: The task.
            split: ``"train"`` or ``"test"``.

        Returns:
            64 hex characters.
        """
        return hashlib.sha256(
            _canonical_json(self.key_payload(backbone_key, task_spec, split)).encode()
        ).hexdigest()

    def paths(self, key: str) -> tuple[Path, Path]:
        """``(safetensors file, manifest)`` of an entry."""
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str) -> tuple[Tensor, Tensor] | None:
        """The entry's ``(features, labels)``, or ``None`` on a miss.

        A corrupt or partial entry (unreadable manifest, missing file, checksum or shape mismatch) warns
        and returns ``None``, so that the caller rebuilds it.

        Args:
            key: From :meth:`key`.

        Returns:
            ``(features (N, d) float32, labels (N,) int64)`` or ``None``.
        """
        data_path, manifest_path = self.paths(key)
        if not manifest_path.exists():
            if data_path.exists():
                self._warn(key, "data file without a manifest (interrupted write?)")
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != CACHE_FORMAT_VERSION or manifest.get("key") != key:
                self._warn(
                    key, f"manifest format/key mismatch ({manifest.get('format')}, {manifest.get('key')})"
                )
                return None
            if not data_path.exists():
                self._warn(key, f"manifest present but {data_path.name} missing")
                return None
            digest = _sha256_file(data_path)
            if digest != manifest["sha256"]:
                self._warn(key, f"checksum mismatch ({digest[:12]}… != {manifest['sha256'][:12]}…)")
                return None
            from safetensors.torch import load_file

            tensors = load_file(str(data_path))
            features, labels = tensors["features"], tensors["labels"]
            if (
                list(features.shape) != manifest["features"]["shape"]
                or list(labels.shape) != manifest["labels"]["shape"]
                or features.dtype != torch.float32
                or labels.dtype != torch.int64
                or features.ndim != 2
                or features.shape[0] != labels.shape[0]
            ):
                self._warn(
                    key,
                    f"unexpected tensors: features {features.dtype} {tuple(features.shape)}, labels "
                    f"{labels.dtype} {tuple(labels.shape)} vs manifest "
                    f"{manifest['features']}, {manifest['labels']}",
                )
                return None
        except Exception as err:  # any failure to read means a rebuild
            self._warn(key, f"{type(err).__name__}: {err}")
            return None
        return features, labels

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The entry's manifest (unverified), or ``None``."""
        path = self.paths(key)[1]
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, key: str, features: Tensor, labels: Tensor, meta: dict[str, Any] | None = None) -> Path:
        """Write an entry atomically (data first, manifest last).

        Args:
            key: From :meth:`key`.
            features: ``(N, d)``, stored as float32.
            labels: ``(N,)``, stored as int64.
            meta: JSON-able description kept in the manifest.

        Returns:
            The manifest path.
        """
        from safetensors.torch import save_file

        if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                "expected features (N, d) and labels (N,), got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}"
            )
        features = features.detach().to("cpu", torch.float32).contiguous()
        labels = labels.detach().to("cpu", torch.int64).contiguous()
        self.root.mkdir(parents=True, exist_ok=True)
        data_path, manifest_path = self.paths(key)
        manifest_path.unlink(missing_ok=True)  # invalidate any old entry before touching its data
        with _atomic_path(data_path) as tmp:
            save_file({"features": features, "labels": labels}, str(tmp), metadata={"key": key})
            digest = _sha256_file(tmp)
        manifest = {
            "format": CACHE_FORMAT_VERSION,
            "key": key,
            "file": data_path.name,
            "sha256": digest,
            "features": {"shape": list(features.shape), "dtype": "float32"},
            "labels": {"shape": list(labels.shape), "dtype": "int64"},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "meta": meta or {},
        }
        with _atomic_path(manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        return manifest_path

    @staticmethod
    def _warn(key: str, reason: str) -> None:
        warnings.warn(
            f"feature cache entry {key[:12]}… is corrupt or partial ({reason}); rebuilding it", stacklevel=3
        )
