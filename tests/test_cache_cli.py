"""`tta cache list|clear`: entries, statuses, sizes, filters, dry runs, leftovers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tta.cli._cache import format_bytes, main
from tta.data import FeatureCache
from tta.data._cache import PARTIAL_PREFIX

ROOT = Path(__file__).resolve().parents[1]


def _meta(backbone: str, dataset: str, split: str) -> dict:
    return {
        "backbone": {"backbone": backbone, "weights": "w", "preprocess": {}},
        "task": {"dataset": dataset, "classes": [0, 1], "seed": 0},
        "split": split,
    }


@pytest.fixture
def populated(tmp_path) -> tuple[FeatureCache, dict[str, str]]:
    """Three sound entries, one corrupt entry, and three kinds of leftovers."""
    cache = FeatureCache(tmp_path / "cache")
    gen = torch.Generator().manual_seed(0)
    keys = {}
    for name, backbone, dataset, split, n in (
        ("lite_digits_train", "efficientnet_lite0", "digits", "train", 10),
        ("lite_fmnist_test", "efficientnet_lite0", "fashion_mnist", "test", 6),
        ("resnet_digits_train", "timm/resnet18", "digits", "train", 8),
        ("corrupt", "timm/resnet18", "fashion_mnist", "train", 4),
    ):
        key = f"{len(keys):x}" * 64
        cache.save(
            key, torch.randn(n, 3, generator=gen), torch.arange(n), meta=_meta(backbone, dataset, split)
        )
        keys[name] = key
    data = cache.paths(keys["corrupt"])[0]
    raw = bytearray(data.read_bytes())
    raw[-2] ^= 0xFF
    data.write_bytes(bytes(raw))
    shard_dir = cache.root / f"{PARTIAL_PREFIX}{'e' * 64}-x1y2"
    shard_dir.mkdir()
    (shard_dir / "rank-00000.safetensors").write_bytes(b"\x01" * 100)
    (cache.root / f".{'f' * 64}.safetensors.ab12.tmp").write_bytes(b"\x02" * 30)
    (cache.root / f"{'d' * 64}.safetensors").write_bytes(b"\x03" * 50)  # data without a manifest
    return cache, keys


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_statuses_sizes_and_metadata(populated, capsys):
    cache, keys = populated
    listing = _json(capsys, ["list", "--cache-dir", str(cache.root), "--json"])
    assert listing["cache_dir"] == str(cache.root)
    by_key = {e["key"]: e for e in listing["entries"]}
    assert len(by_key) == 7
    for name in ("lite_digits_train", "lite_fmnist_test", "resnet_digits_train"):
        entry = by_key[keys[name]]
        assert entry["status"] == "ok" and entry["reason"] == ""
        data, manifest = cache.paths(keys[name])
        assert entry["bytes"] == data.stat().st_size + manifest.stat().st_size
    assert by_key[keys["lite_digits_train"]]["shape"] == [10, 3]
    assert by_key[keys["lite_digits_train"]]["task"] == "digits[0,1] seed=0"
    assert by_key[keys["resnet_digits_train"]]["backbone"] == "timm/resnet18"
    assert by_key[keys["lite_fmnist_test"]]["split"] == "test"
    assert by_key[keys["corrupt"]]["status"] == "corrupt"
    assert "checksum mismatch" in by_key[keys["corrupt"]]["reason"]
    assert by_key["e" * 64]["status"] == "partial" and by_key["e" * 64]["bytes"] == 100
    assert "interrupted extraction" in by_key["e" * 64]["reason"]
    assert by_key["f" * 64]["status"] == "partial" and by_key["f" * 64]["bytes"] == 30
    assert by_key["d" * 64]["status"] == "partial" and by_key["d" * 64]["bytes"] == 50
    # without verification the corrupt entry is not read, so it passes as ok
    fast = _json(capsys, ["list", "--cache-dir", str(cache.root), "--json", "--no-verify"])
    assert {e["key"]: e["status"] for e in fast["entries"]}[keys["corrupt"]] == "ok"


def test_list_table(populated, capsys):
    cache, keys = populated
    assert main(["list", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    for key in keys.values():
        assert key[:12] in out
    assert "10×3" in out and "efficientnet_lite0" in out and "digits[0,1] seed=0" in out
    assert "7 entries" in out and "3 ok, 1 corrupt, 3 partial" in out


def test_list_uses_tta_cache_dir(populated, capsys, monkeypatch, tmp_path):
    cache, _ = populated
    monkeypatch.setenv("TTA_CACHE_DIR", str(cache.root))
    assert len(_json(capsys, ["list", "--json"])["entries"]) == 7
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "nowhere"))
    assert _json(capsys, ["list", "--json"])["entries"] == []
    assert main(["list"]) == 0 and "empty" in capsys.readouterr().out


def test_clear_by_backbone_dry_run_then_for_real(populated, capsys):
    cache, keys = populated
    before = {p.name for p in cache.root.iterdir()}
    dry = _json(
        capsys,
        ["clear", "--cache-dir", str(cache.root), "--backbone", "timm/resnet18", "--dry-run", "--json"],
    )
    assert dry["dry_run"] and {e["key"] for e in dry["removed"]} == {
        keys["resnet_digits_train"],
        keys["corrupt"],
    }
    assert {p.name for p in cache.root.iterdir()} == before  # nothing removed
    expected = sum(
        sum(p.stat().st_size for p in cache.paths(keys[n])) for n in ("resnet_digits_train", "corrupt")
    )
    assert dry["freed_bytes"] == expected
    real = _json(capsys, ["clear", "--cache-dir", str(cache.root), "--backbone", "timm/resnet18", "--json"])
    assert real["freed_bytes"] == expected
    assert not any(p.exists() for n in ("resnet_digits_train", "corrupt") for p in cache.paths(keys[n]))
    assert cache.load(keys["lite_digits_train"]) is not None  # the others stay
    remaining = {
        e["key"] for e in _json(capsys, ["list", "--cache-dir", str(cache.root), "--json"])["entries"]
    }
    assert remaining == {keys["lite_digits_train"], keys["lite_fmnist_test"], "e" * 64, "f" * 64, "d" * 64}


def test_clear_by_dataset_and_key(populated, capsys):
    cache, keys = populated
    out = _json(
        capsys,
        [
            "clear",
            "--cache-dir",
            str(cache.root),
            "--dataset",
            "digits",
            "--backbone",
            "efficientnet_lite0",
            "--json",
        ],
    )
    assert [e["key"] for e in out["removed"]] == [keys["lite_digits_train"]]
    out = _json(
        capsys, ["clear", "--cache-dir", str(cache.root), "--key", keys["lite_fmnist_test"][:6], "--json"]
    )
    assert [e["key"] for e in out["removed"]] == [keys["lite_fmnist_test"]]
    out = _json(capsys, ["clear", "--cache-dir", str(cache.root), "--key", "eeee", "--json"])
    assert [e["status"] for e in out["removed"]] == ["partial"] and out["freed_bytes"] == 100


def test_clear_all_removes_leftovers_and_reports_bytes(populated, capsys):
    cache, _ = populated
    total = sum(p.stat().st_size for p in cache.root.rglob("*") if p.is_file())
    assert main(["clear", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert "removed 7 entries" in out and f"freed {format_bytes(total)}" in out
    assert list(cache.root.iterdir()) == []


def test_clear_never_touches_files_that_are_not_cache_entries(populated, capsys):
    """A mistyped TTA_CACHE_DIR pointing at a project folder keeps the project's own files (issue 16)."""
    cache, _ = populated
    foreign = {
        "settings.json": b'{"a": 1}',
        "model.safetensors": b"\x04" * 40,
        ".notes.json.swp.tmp": b"x",
        "README.md": b"hello",
    }
    for name, data in foreign.items():
        (cache.root / name).write_bytes(data)
    listed = _json(capsys, ["list", "--cache-dir", str(cache.root), "--json"])
    assert not any(name in json.dumps(listed) for name in foreign)
    assert main(["clear", "--cache-dir", str(cache.root)]) == 0
    assert "removed 7 entries" in capsys.readouterr().out
    assert sorted(p.name for p in cache.root.iterdir()) == sorted(foreign)
    for name, data in foreign.items():
        assert (cache.root / name).read_bytes() == data


def test_help_and_usage_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "list" in text and "clear" in text and "TTA_CACHE_DIR" in text
    with pytest.raises(SystemExit) as exc:
        main(["clear", "--help"])
    assert exc.value.code == 0 and "--dry-run" in capsys.readouterr().out
    assert main([]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["list", "--cache-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_format_bytes():
    assert format_bytes(0) == "0 B" and format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(5 * 1024**3) == "5.0 GiB"


@pytest.mark.slow
def test_console_script(populated):
    cache, keys = populated
    tta = ROOT / ".venv" / "bin" / "tta"
    if not tta.exists():
        pytest.skip("no .venv/bin/tta console script")
    env = {**os.environ, "TTA_CACHE_DIR": str(cache.root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(tta), "cache", "list", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = json.loads(proc.stdout)["entries"]
    assert {e["key"] for e in entries} >= set(keys.values()) and len(entries) == 7


def test_every_command_ends_with_one_tta_error_line(tmp_path, capsys):
    """`tta cache`, `tta rank` and `tta benchmark` print the `tta: error:` line of `tta fit` (issue 16)."""
    from tta.cli._benchmark import main as benchmark_main
    from tta.cli._rank import main as rank_main

    (tmp_path / "file").write_text("x")
    long_name = tmp_path / ("deep" * 30) / "missing.yaml"
    for command, argv in (
        (main, ["list", "--cache-dir", str(tmp_path / "file")]),
        (rank_main, ["--target", "digits", "--zoo", "efficientnet_lite0", "digits"]),
        (benchmark_main, ["--config", str(long_name)]),
    ):
        assert command(argv) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("tta: error: "), err
