"""Feature extraction as a Lightning predict pass: shard assembly, DDP on CPU (gloo), interruptions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _helpers import tta_fit_command
from torch import Tensor

from tta.backbones import Backbone, EfficientNetLite0, ImagePreprocess
from tta.data import FeatureCache, TaskSpec, digits, extract_features, get_features, load_task
from tta.data._cache import PARTIAL_PREFIX
from tta.modules._datamodule import extraction_trainer_kwargs
from tta.modules._extraction import PreprocessedChunks, assemble_shards

ROOT = Path(__file__).resolve().parents[1]
SPEC = TaskSpec("digits", classes=[0, 1], train_per_class=5, test_per_class=5)


# ------------------------------------------------------------------------------------------ assembly


def test_assemble_shards_orders_rows_and_drops_padding_repeats():
    gen = torch.Generator().manual_seed(0)
    n, d, world, chunk = 23, 5, 4, 4
    reference = torch.randn(n, d, generator=gen)
    # 6 chunks dealt to 4 ranks by the sampler the predict pass uses: the last ranks get repeats
    chunks = [torch.arange(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    dealt = [
        list(torch.utils.data.DistributedSampler(chunks, num_replicas=world, rank=r, shuffle=False))
        for r in range(world)
    ]
    shards = [torch.cat([chunks[i] for i in ids]) for ids in dealt]
    assert sum(s.numel() for s in shards) > n  # there are repeats to drop
    features = [reference[s] + 0.0 for s in shards]
    out = assemble_shards(shards[::-1], features[::-1], n)  # shard order does not matter
    assert torch.equal(out, reference)
    perm = torch.randperm(n, generator=gen)
    assert torch.equal(assemble_shards([perm], [reference[perm]], n), reference)


def test_assemble_shards_errors():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"miss 1 of 4 samples \(first missing: \[3\]\)"):
        assemble_shards([torch.arange(3)], [x], 4)
    with pytest.raises(ValueError, match=r"span 0\.\.3, expected 0\.\.2"):
        assemble_shards([torch.tensor([0, 1, 3])], [x], 3)
    with pytest.raises(ValueError, match="3 indices for 2 feature rows"):
        assemble_shards([torch.arange(3)], [x[:2]], 3)
    with pytest.raises(ValueError, match="no shards"):
        assemble_shards([], [], 3)


def test_preprocessed_chunks_cover_every_row_once():
    images = torch.randint(0, 256, (10, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pre = EfficientNetLite0(image_size=32).preprocess()
    chunks = PreprocessedChunks(images, pre, 4)
    assert len(chunks) == 3
    idx, x = chunks[2]
    assert idx.tolist() == [8, 9] and x.shape == (2, 3, 32, 32)
    assert torch.equal(x, pre.batch(images[8:10]))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        PreprocessedChunks(images, pre, 0)


# ------------------------------------------------------------------------------------- predict pass


def test_predict_pass_equals_bare_forward_on_the_same_batches():
    bb = EfficientNetLite0(image_size=32)
    ds = digits().subset(range(20))
    feats = extract_features(bb, ds, batch_size=8, progress=False, accelerator="cpu")
    assert feats.shape == (20, 1280) and feats.dtype == torch.float32
    assert not feats.is_inference() and feats.device.type == "cpu"
    pre = bb.preprocess()
    with torch.inference_mode():
        direct = torch.cat([bb(pre.batch(ds.images[s : s + 8])) for s in range(0, 20, 8)])
    assert torch.equal(feats, direct)  # same chunks, same kernels: bit for bit
    assert next(bb.parameters()).device.type == "cpu"


class _Tokens:
    """A picklable text preprocessing: characters to ids, padded; ``batch`` returns a dict of tensors."""

    def batch(self, texts: list[str]) -> dict[str, Tensor]:
        length = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = torch.tensor([ord(c) % 64 for c in t])
            mask[i, : len(t)] = 1.0
        return {"input_ids": ids, "attention_mask": mask}

    def config(self) -> dict[str, str]:
        return {"kind": "chars"}


class _BagOfChars(Backbone):
    """Mean-pooled character embeddings: a tiny text backbone taking a dict batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(64, 6)
        self.name, self.feature_dim = "bag_of_chars", 6
        self.freeze()

    def forward(self, x: dict[str, Tensor]) -> Tensor:  # type: ignore[override]
        mask = x["attention_mask"][..., None]
        return (self.embed(x["input_ids"]) * mask).sum(1) / mask.sum(1)

    def preprocess(self) -> _Tokens:  # type: ignore[override]
        return _Tokens()

    def weights_fingerprint(self) -> str:
        return "random-init"


class _Texts:
    def __init__(self, texts: list[str]) -> None:
        self.inputs, self.name, self.split = texts, "texts", None
        self.labels = torch.zeros(len(texts), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.inputs)


def test_text_inputs_with_dict_batches():
    texts = ["spam spam", "hello", "a", "free money now", "ok", "see you at 5"]
    bb = _BagOfChars()
    feats = extract_features(bb, _Texts(texts), batch_size=4, progress=False, accelerator="cpu")
    assert feats.shape == (6, 6)
    for i, t in enumerate(texts):  # each text alone (no padding) gives the same mean embedding
        expected = bb.embed(torch.tensor([ord(c) % 64 for c in t])).mean(0)
        torch.testing.assert_close(feats[i], expected, rtol=1e-6, atol=1e-6)


def test_extraction_trainer_kwargs_single_device():
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert extraction_trainer_kwargs(trainer) == {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "num_nodes": 1,
    }


# ------------------------------------------------------------------------------------- interruptions


class _Failing(Backbone):
    """EfficientNet-Lite0-free tiny backbone whose ``fail_at``-th forward raises (an interruption)."""

    def __init__(self, fail_at: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        self.name, self.feature_dim, self.calls, self.fail_at = "failing", 4, 0, fail_at
        self.error = error
        self._pre = ImagePreprocess.from_data_config(
            {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        )
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.error("interrupted")
        return self.net(x)

    def preprocess(self) -> ImagePreprocess:
        return self._pre

    def weights_fingerprint(self) -> str:
        return "random-init"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_extraction_leaves_no_entry(tmp_path, error):
    cache = FeatureCache(tmp_path)
    bb = _Failing(fail_at=2, error=error)
    # Lightning turns a KeyboardInterrupt into a graceful shutdown and SystemExit(1)
    with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
        get_features(bb, SPEC, "train", cache=cache, batch_size=3, progress=False, accelerator="cpu")
    key = cache.key(bb.cache_key(), SPEC, "train")
    assert not any(p.exists() for p in cache.paths(key))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(key) is None  # a plain miss: nothing looks complete
    assert cache.scan() == []


def test_leftover_shard_directory_is_detected_and_rebuilt(tmp_path):
    cache = FeatureCache(tmp_path)
    bb = _Failing()
    key = cache.key(bb.cache_key(), SPEC, "train")
    leftover = tmp_path / f"{PARTIAL_PREFIX}{key}-a1b2c3"  # what a killed DDP extraction leaves
    leftover.mkdir()
    (leftover / "rank-00001.safetensors").write_bytes(b"\x00" * 40)
    with pytest.warns(UserWarning, match="corrupt or partial.*interrupted extraction"):
        assert cache.load(key) is None
    assert [e.status for e in cache.scan()] == ["partial"]
    with pytest.warns(UserWarning, match="interrupted extraction"):
        rebuilt = get_features(bb, SPEC, "train", cache=cache, progress=False, accelerator="cpu")
    assert bb.calls == 1 and not rebuilt.cache_hit and not leftover.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = cache.load(key)
    assert hit is not None and torch.equal(hit[0], rebuilt.features)
    assert [e.status for e in cache.scan()] == ["ok"]


@pytest.mark.parametrize("damage", ["truncate", "drop_manifest", "checksum"])
def test_damaged_entry_is_never_used(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    bb = _Failing()
    first = get_features(bb, SPEC, "test", cache=cache, progress=False, accelerator="cpu")
    data, manifest = cache.paths(first.key)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "drop_manifest":
        manifest.unlink()
    else:
        record = json.loads(manifest.read_text())
        record["sha256"] = "0" * 64
        manifest.write_text(json.dumps(record))
    status = {e.key: e.status for e in cache.scan()}[first.key]
    assert status == ("partial" if damage == "drop_manifest" else "corrupt")
    with pytest.warns(UserWarning, match="corrupt or partial"):
        again = get_features(bb, SPEC, "test", cache=cache, progress=False, accelerator="cpu")
    assert bb.calls == 2 and not again.cache_hit
    assert torch.equal(again.features, first.features)
    assert [e.status for e in cache.scan()] == ["ok"]


# ------------------------------------------------------------------------------------- DDP on CPU

DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from safetensors.torch import save_file
    from tta.backbones import EfficientNetLite0
    from tta.data import FeatureCache, TaskSpec, digits, extract_features, get_features

    torch.set_num_threads(1)
    out, cache_dir = sys.argv[1], sys.argv[2]
    bb = EfficientNetLite0(image_size=32)
    ds = digits().subset(range(50))
    kw = dict(accelerator="cpu", devices=2, strategy="ddp", progress=False)
    plain = extract_features(bb, ds, batch_size=8, **kw)
    spec = TaskSpec("digits", classes=[0, 1, 2], train_per_class=7, test_per_class=3)
    cached = get_features(bb, spec, "train", cache=FeatureCache(cache_dir), batch_size=4, **kw)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    save_file({"plain": plain.contiguous(), "cached": cached.features.contiguous()}, f"{out}.{rank}")
    """
)


@pytest.mark.slow
def test_ddp_extraction_on_two_cpu_processes_equals_single_process(tmp_path):
    """strategy="ddp" (Lightning's script launcher re-runs the script as rank 1, gloo backend).

    Equality is exact: each rank runs whole chunks of the same batch size as the single process (50
    images in 7 chunks of 8: rank 1 also re-runs chunk 0 as padding, dropped at assembly), with the same
    kernels on one thread, so every row is computed from the same batch in the same way.
    """
    from safetensors.torch import load_file

    script = tmp_path / "ddp_extract.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / "cache")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [load_file(str(tmp_path / f"out.{r}")) for r in (0, 1)]

    bb = EfficientNetLite0(image_size=32)
    single = extract_features(bb, digits().subset(range(50)), batch_size=8, progress=False, accelerator="cpu")
    spec = TaskSpec("digits", classes=[0, 1, 2], train_per_class=7, test_per_class=3)
    train, _ = load_task(spec)
    single_cached = extract_features(bb, train, batch_size=4, progress=False, accelerator="cpu")
    for out in ranks:  # every rank holds the assembled result
        assert torch.equal(out["plain"], single)
        assert torch.equal(out["cached"], single_cached)
    cache = FeatureCache(tmp_path / "cache")
    entries = cache.scan()
    assert [e.status for e in entries] == ["ok"] and entries[0].shape == (21, 1280)
    hit = cache.load(entries[0].key)
    assert hit is not None and torch.equal(hit[0], single_cached) and torch.equal(hit[1], train.labels)
    assert not list((tmp_path / "cache").glob(f"{PARTIAL_PREFIX}*"))  # shards cleaned up


@pytest.mark.slow
def test_tta_fit_under_ddp_on_two_cpu_processes(tmp_path):
    """`tta fit --trainer.strategy ddp --trainer.devices 2`: features extracted by both ranks, one fit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = tta_fit_command(
        ROOT / "tests" / "conf" / "tiny.yaml",
        tmp_path / "runs",
        tmp_path / "cache",
        *("--trainer.strategy", "ddp", "--trainer.devices", 2, "--trainer.accelerator", "cpu"),
    )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 1, results  # rank zero reports once
    result = json.loads(results[0].read_text())
    t = result["terms"]
    assert result["bound"] == pytest.approx(
        t["weighted_source_loss"] + t["conditional_entropy"] + t["tau_w1"], rel=1e-9
    )
    assert {"source_head", "probe", "standard_probe", "transform"} <= set(result["timings"])
    assert not any(result["data"]["cache_hits"].values())
    assert result["data"]["target_test"]["n"] == 12  # every rank evaluated every test point
    # the entries written by rank zero hold the single-process features
    cache = FeatureCache(tmp_path / "cache")
    assert sorted(e.status for e in cache.scan()) == ["ok"] * 4
    bb = EfficientNetLite0(image_size=32)
    spec = TaskSpec("digits", classes=[0, 1], train_per_class=12, test_per_class=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = get_features(bb, spec, "train", cache=cache, progress=False)
    assert hit.cache_hit
    train, _ = load_task(spec)
    single = extract_features(bb, train, batch_size=32, progress=False, accelerator="cpu")
    assert torch.equal(hit.features, single)
