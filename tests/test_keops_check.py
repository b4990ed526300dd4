"""The KeOps health check that guards the online Sinkhorn backend on CUDA (a broken KeOps segfaults)."""

from __future__ import annotations

import json
import signal

import pytest
import torch

import tta._keops_check as kc
from tta.distances import SinkhornDistance
from tta.errors import NumericalWarning, TTAInputError


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TTA_KEOPS_CHECK", raising=False)
    kc.keops_status.cache_clear()
    yield tmp_path
    kc.keops_status.cache_clear()


def test_crashing_probe_is_caught_and_remembered(fresh, monkeypatch) -> None:
    monkeypatch.setattr(kc, "_PROBE", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    works, detail = kc.keops_status("cpu")
    assert not works
    assert f"signal {int(signal.SIGSEGV)}" in detail
    record = json.loads((fresh / ".checks" / "keops.json").read_text())
    assert list(record.values()) == [[False, detail]]
    # the answer on disk is reused: a probe that would now succeed is not run again
    kc.keops_status.cache_clear()
    monkeypatch.setattr(kc, "_PROBE", "print('ok')\n")
    assert kc.keops_status("cpu") == (False, detail)


def test_failing_probe_reports_its_last_line(fresh, monkeypatch) -> None:
    monkeypatch.setattr(kc, "_PROBE", "raise RuntimeError('nvrtc: bad include path')\n")
    works, detail = kc.keops_status("cpu")
    assert not works and detail == "RuntimeError: nvrtc: bad include path"


def test_check_can_be_skipped(fresh, monkeypatch) -> None:
    monkeypatch.setenv("TTA_KEOPS_CHECK", "0")
    monkeypatch.setattr(kc, "_PROBE", "raise SystemExit(1)\n")
    assert kc.keops_status("cpu") == (True, "")


def test_backend_falls_back_or_refuses_when_keops_fails(monkeypatch) -> None:
    monkeypatch.setattr(kc, "keops_status", lambda device_type="cuda": (False, "killed by signal 11"))
    cuda = torch.device("cuda")
    with pytest.warns(NumericalWarning, match=r"falls back|uses 'tensorized'"):
        assert SinkhornDistance(backend="auto").resolve_backend(cuda) == "tensorized"
    with pytest.raises(TTAInputError, match=r"signal 11.*tensorized"):
        SinkhornDistance(backend="online").resolve_backend(cuda)
    # CPU never asks KeOps through the check; tensorized stays tensorized everywhere
    assert SinkhornDistance(backend="auto").resolve_backend(torch.device("cpu")) == "tensorized"
    assert SinkhornDistance(backend="tensorized").resolve_backend(cuda) == "tensorized"


def test_backend_keeps_online_when_keops_works(monkeypatch) -> None:
    monkeypatch.setattr(kc, "keops_status", lambda device_type="cuda": (True, ""))
    assert SinkhornDistance(backend="auto").resolve_backend(torch.device("cuda")) == "online"


def test_the_record_is_not_taken_for_a_cache_entry(fresh, monkeypatch) -> None:
    from tta.data import FeatureCache

    monkeypatch.setattr(kc, "_PROBE", "print('ok')\n")
    assert kc.keops_status("cpu") == (True, "")
    assert (fresh / ".checks" / "keops.json").is_file()
    assert FeatureCache(fresh).scan() == []  # `tta cache list` shows nothing, `clear` removes nothing
