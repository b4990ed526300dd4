"""tta._atomic: the one atomic-write helper (cache entries, result records, reports, weights files)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from tta._atomic import atomic_path, default_mode
from tta.data import FeatureCache
from tta.results import write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path, umask_022):
    assert default_mode() == 0o644
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert _mode(tmp_path / "a.txt") == 0o644
    write_json_atomic(tmp_path / "result.json", {"bound": 1.0})
    assert _mode(tmp_path / "result.json") == 0o644
    cache = FeatureCache(tmp_path / "cache")
    key = "a" * 64
    data, manifest = cache.save(key, torch.zeros(2, 3), torch.arange(2)), cache.paths(key)[1]
    assert _mode(data) == 0o644 and _mode(manifest) == 0o644


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
