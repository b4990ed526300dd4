"""On-disk cache of extracted features.

An entry is two files in the cache root:

- ``<key>.safetensors``: tensors ``features`` (N, d) float32 and ``labels`` (N,) int64;
- ``<key>.json``: the manifest: format version, key, shapes, dtypes, the SHA-256 of the safetensors file,
  and free-form ``meta`` (backbone, task, timings).

Both are written atomically (temporary file in the same directory, then ``os.replace``), the manifest
last and any old manifest removed first, so a reader sees a complete entry or none. :meth:`FeatureCache.load`
checks the manifest, the checksum and the shapes; a corrupt or partial entry gives a warning and a miss,
and is never used.

A distributed extraction (:mod:`tta.modules`) writes its per-rank shards into a temporary
``.partial-<key>-<random>/`` directory of the cache root; rank zero assembles them into an entry as above
and the directory is removed. A directory left by an interrupted extraction never looks like an entry:
:meth:`FeatureCache.load` warns about it and misses, the rebuilt entry's :meth:`FeatureCache.save` removes
it, and ``tta cache list|clear`` (:meth:`FeatureCache.scan`, :meth:`FeatureCache.remove`) show and remove
it with the other leftovers (``.<name>.<random>.tmp`` files, a data file without its manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tta._atomic import atomic_path
from tta.data._tasks import TaskSpec

__all__ = ["CACHE_FORMAT_VERSION", "PARTIAL_PREFIX", "CacheEntry", "FeatureCache", "default_cache_dir"]

#: Bump when the meaning of cached features changes (invalidates every entry).
CACHE_FORMAT_VERSION = 1

#: Name prefix of the temporary shard directories of an extraction (one left behind means it was interrupted).
PARTIAL_PREFIX = ".partial-"
#: Folder of the cache root holding the per-entry write locks (ignored by scan and clear).
LOCK_DIR = ".locks"
#: An entry's key: 64 lowercase hex characters. Files not named after one are never read or removed.
_KEY = re.compile(r"^[0-9a-f]{64}$")

#: ``dataset_kwargs`` that do not change the data (left out of the key).
_NON_DATA_KWARGS = frozenset({"download"})


def default_cache_dir() -> Path:
    """``$TTA_CACHE_DIR``, else the user cache folder's ``tta/features`` (platformdirs).

    On Linux that is ``$XDG_CACHE_HOME/tta/features``, ``~/.cache/tta/features`` when ``XDG_CACHE_HOME``
    is unset; on macOS ``~/Library/Caches/tta/features``.
    """
    env = os.environ.get("TTA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("tta", appauthor=False) / "features"


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class CacheEntry:
    """One entry of the cache (or one leftover of an interrupted write), as listed by ``tta cache list``.

    Args:
        key: The entry's key (for a leftover, the key it belonged to, when its name tells).
        status: ``"ok"``, ``"corrupt"`` (a manifest whose entry does not verify) or ``"partial"`` (a
            temporary file, an orphan data file, or the shard directory of an interrupted extraction).
        paths: The entry's files and directories.
        manifest: The parsed manifest, if readable.
        reason: Why it is not ``ok``.
    """

    key: str
    status: str
    paths: list[Path]
    manifest: dict[str, Any] | None = None
    reason: str = ""

    @property
    def meta(self) -> dict[str, Any]:
        """The manifest's ``meta`` (empty without a manifest)."""
        meta = (self.manifest or {}).get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def backbone(self) -> str:
        """The backbone's name, or ``""``."""
        bb = self.meta.get("backbone")
        return str(bb.get("backbone", "")) if isinstance(bb, dict) else str(bb or "")

    @property
    def dataset(self) -> str:
        """The task's dataset name, or ``""``."""
        task = self.meta.get("task")
        return str(task.get("dataset", "")) if isinstance(task, dict) else ""

    @property
    def task(self) -> str:
        """A short description of the task (``digits[0,1] seed=0``), or ``""``."""
        task = self.meta.get("task")
        if not isinstance(task, dict):
            return ""
        classes = task.get("classes")
        cls = "" if classes is None else "[" + ",".join(str(c) for c in classes) + "]"
        return f"{task.get('dataset', '')}{cls} seed={task.get('seed', 0)}"

    @property
    def split(self) -> str:
        """``"train"``/``"test"``, or ``""``."""
        return str(self.meta.get("split", ""))

    @property
    def shape(self) -> tuple[int, ...] | None:
        """``(N, d)`` from the manifest."""
        shape = ((self.manifest or {}).get("features") or {}).get("shape")
        return tuple(int(v) for v in shape) if isinstance(shape, list) else None

    @property
    def created(self) -> str:
        """Creation time from the manifest, else the files' modification time (ISO 8601)."""
        created = (self.manifest or {}).get("created")
        if isinstance(created, str):
            return created
        times = [p.stat().st_mtime for p in self.paths if p.exists()]
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(max(times))) if times else ""

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(_disk_size(p) for p in self.paths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (``tta cache list --json``)."""
        return {
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "backbone": self.backbone,
            "dataset": self.dataset,
            "task": self.task,
            "split": self.split,
            "shape": list(self.shape) if self.shape else None,
            "bytes": self.size,
            "created": self.created,
            "paths": [str(p) for p in self.paths],
        }


class FeatureCache:
    """Cache of ``(features, labels)`` per backbone, task and split.

    Args:
        root: Directory of the cache; default ``$TTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/tta/features``.
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
        task: dict[str, Any] = {
            "dataset": spec["dataset"],
            "dataset_kwargs": kwargs,
            "classes": spec["classes"],
            "per_class": cap,
            "test_fraction": spec["test_fraction"],
            "seed": spec["seed"],
        }
        # Every other field selects or changes the data too (random_classes, label_map, shifts, and any
        # added later); unset ones stay out, so the keys of plain tasks do not change.
        skip = {*task, "train_per_class", "test_per_class"}
        task.update({k: v for k, v in spec.items() if k not in skip and v is not None})
        return {"format": CACHE_FORMAT_VERSION, "backbone": backbone_key, "task": task, "split": split}

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

        A corrupt or partial entry (unreadable manifest, missing file, checksum or shape mismatch, or only
        the leftover shards of an interrupted extraction) warns and returns ``None``, so that the caller
        rebuilds it.

        Args:
            key: From :meth:`key`.

        Returns:
            ``(features (N, d) float32, labels (N,) int64)`` or ``None``.
        """
        tensors, reason = self._read(key)
        if reason is not None:
            self._warn(key, reason)
        return tensors

    def verify(self, key: str) -> str | None:
        """Why the entry is corrupt or partial, ``None`` when it is sound (``"missing"`` when absent).

        Args:
            key: From :meth:`key`.
        """
        tensors, reason = self._read(key)
        if tensors is None and reason is None:
            return "missing"
        return reason

    def _read(self, key: str) -> tuple[tuple[Tensor, Tensor] | None, str | None]:
        """``(tensors, None)`` for a sound entry, ``(None, reason)`` for a damaged one, ``(None, None)``."""
        data_path, manifest_path = self.paths(key)
        if not manifest_path.exists():
            if data_path.exists():
                return None, "data file without a manifest (interrupted write?)"
            leftovers = self.partial_dirs(key)
            if leftovers:
                return None, f"only the shards of an interrupted extraction ({leftovers[0].name})"
            return None, None
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                return None, f"manifest is not a JSON object (a {type(manifest).__name__})"
            if manifest.get("format") != CACHE_FORMAT_VERSION or manifest.get("key") != key:
                return None, f"manifest format/key mismatch ({manifest.get('format')}, {manifest.get('key')})"
            if not data_path.exists():
                return None, f"manifest present but {data_path.name} missing"
            digest = _sha256_file(data_path)
            if digest != manifest["sha256"]:
                return None, f"checksum mismatch ({digest[:12]}… != {manifest['sha256'][:12]}…)"
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
                return None, (
                    f"unexpected tensors: features {features.dtype} {tuple(features.shape)}, labels "
                    f"{labels.dtype} {tuple(labels.shape)} vs manifest "
                    f"{manifest['features']}, {manifest['labels']}"
                )
        except Exception as err:  # any failure to read means a rebuild
            return None, f"{type(err).__name__}: {err}"
        return (features, labels), None

    def partial_dirs(self, key: str | None = None) -> list[Path]:
        """Shard directories left by interrupted extractions (of ``key``, or all), oldest first."""
        if not self.root.is_dir():
            return []
        prefix = PARTIAL_PREFIX + (f"{key}-" if key else "")
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(prefix)]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    def scan(self, verify: bool = True) -> list[CacheEntry]:
        """Every entry of the cache, and every leftover of an interrupted write or extraction.

        Args:
            verify: Check each entry's checksum and tensors (reads every file); otherwise an entry with a
                readable manifest and its data file is reported ``ok``.

        Returns:
            One :class:`CacheEntry` per key (status ``ok``/``corrupt``) and per leftover (``partial``),
            sorted by creation time.
        """
        if not self.root.is_dir():
            return []
        out: list[CacheEntry] = []
        seen: set[Path] = set()
        for manifest_path in sorted(self.root.glob("*.json")):
            key = manifest_path.stem
            if not _KEY.match(key):  # not a cache entry (a mistyped TTA_CACHE_DIR): never touched
                continue
            data_path = self.paths(key)[0]
            files = [p for p in (data_path, manifest_path) if p.exists()]
            seen.update(files)
            manifest = self.manifest(key)
            if verify:
                reason = self.verify(key)
            elif manifest is None:
                reason = "unreadable manifest"
            else:
                reason = None if data_path.exists() else f"{data_path.name} missing"
            out.append(CacheEntry(key, "ok" if reason is None else "corrupt", files, manifest, reason or ""))
        for path in sorted(self.root.iterdir()):
            if path in seen:
                continue
            if path.name.startswith(PARTIAL_PREFIX) and path.is_dir():
                key = path.name[len(PARTIAL_PREFIX) :].rsplit("-", 1)[0]
                reason = "shards of an interrupted extraction"
            elif (
                path.name.endswith(".tmp")
                and path.name.startswith(".")
                and _KEY.match(path.name[1:].split(".", 1)[0])
            ):
                key = path.name[1:].split(".", 1)[0]
                reason = "temporary file of an interrupted write"
            elif path.suffix == ".safetensors" and _KEY.match(path.stem):
                key = path.stem
                reason = "data file without a manifest"
            else:
                continue
            out.append(CacheEntry(key, "partial", [path], None, reason))
        return sorted(out, key=lambda e: (e.created, e.key))

    def remove(self, entry: CacheEntry) -> int:
        """Delete an entry's files (manifest first, so that it never looks complete); the bytes freed."""
        freed = 0
        for path in sorted(entry.paths, key=lambda p: p.suffix != ".json"):
            size = _disk_size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            freed += size if not path.exists() else 0
        locks = self.root / LOCK_DIR
        (locks / f"{entry.key}.lock").unlink(missing_ok=True)  # its write lock, if it ever had one
        with contextlib.suppress(OSError):  # only when empty: another entry may be being written
            locks.rmdir()
        return freed

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The entry's manifest (unverified), or ``None``."""
        path = self.paths(key)[1]
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None  # JSON, but not a manifest

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
        if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                "expected features (N, d) and labels (N,), got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}"
            )
        features = features.detach().to("cpu", torch.float32).contiguous()
        labels = labels.detach().to("cpu", torch.int64).contiguous()
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock(key):  # one writer per entry, across processes sharing the cache
            return self._save(key, features, labels, meta)

    def lock(self, key: str) -> Any:
        """An inter-process lock of entry ``key`` (:class:`filelock.FileLock`, under ``<root>/.locks/``)."""
        from filelock import FileLock

        folder = self.root / LOCK_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(folder / f"{key}.lock")

    def _save(self, key: str, features: Tensor, labels: Tensor, meta: dict[str, Any] | None) -> Path:
        from safetensors.torch import save_file

        data_path, manifest_path = self.paths(key)
        manifest_path.unlink(missing_ok=True)  # invalidate any old entry before touching its data
        with atomic_path(data_path) as tmp:
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
        with atomic_path(manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        for leftover in self.partial_dirs(key):  # shards of interrupted extractions of this entry
            shutil.rmtree(leftover, ignore_errors=True)
        return manifest_path

    @staticmethod
    def _warn(key: str, reason: str) -> None:
        warnings.warn(
            f"feature cache entry {key[:12]}… is corrupt or partial ({reason}); rebuilding it", stacklevel=3
        )
