"""Does KeOps work on this machine? Asked once, in a child process, because a broken set-up segfaults.

Seen on an H200 with CUDA 13.0 and pykeops 2.3: KeOps' nvrtc code generation crashes the whole Python
process (a segmentation fault: nothing to catch). The ``online`` Sinkhorn backend therefore runs one tiny
KeOps reduction in a child process first; the answer is kept for the process and on disk
(``.checks/keops.json`` in the feature cache folder), keyed by the versions and the device, so the check
costs one compile per set-up.
``TTA_KEOPS_CHECK=0`` skips it (trust KeOps).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["keops_status"]

_PROBE = """
import torch
from pykeops.torch import LazyTensor
dev = "{device}"
g = torch.Generator().manual_seed(0)
x, y = torch.randn(64, 3, generator=g), torch.randn(48, 3, generator=g)
b = torch.randn(48, 1, generator=g)
ref = (-(torch.cdist(x, y) ** 2)).exp() @ b
X, Y = LazyTensor(x.to(dev)[:, None, :]), LazyTensor(y.to(dev)[None, :, :])
out = ((-((X - Y) ** 2).sum(-1)).exp() @ b.to(dev)).cpu()
err = float((out - ref).abs().max())
assert err < 1e-4, f"KeOps result differs from torch by {{err:.3g}}"
print("ok")
"""


def _key(device_type: str) -> str:
    import torch

    try:
        import pykeops

        keops = pykeops.__version__
    except ImportError:  # pragma: no cover - pykeops is a dependency
        keops = "missing"
    name = torch.cuda.get_device_name(0) if device_type == "cuda" and torch.cuda.is_available() else "cpu"
    return f"pykeops-{keops}|torch-{torch.__version__}|cuda-{torch.version.cuda}|{name}"


def _record_path() -> Path:
    """In a sub-folder of the feature cache, which ``tta cache list|clear`` do not take for an entry."""
    from tta.data._cache import default_cache_dir

    return default_cache_dir() / ".checks" / "keops.json"


@functools.cache
def keops_status(device_type: str = "cuda", timeout: float = 600.0) -> tuple[bool, str]:
    """Whether a KeOps reduction runs correctly on ``device_type`` here, and why not.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``.
        timeout: Seconds the child process may take (it compiles one formula).

    Returns:
        ``(works, detail)``: ``detail`` is empty when it works, else what went wrong (the child's last
        output line, or the signal that killed it).
    """
    if os.environ.get("TTA_KEOPS_CHECK", "1").strip() == "0":
        return True, ""
    key = _key(device_type)
    path = _record_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), list):
        works, detail = known[key]
        return bool(works), str(detail)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE.format(device=device_type)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        works = proc.returncode == 0 and proc.stdout.strip().endswith("ok")
        if works:
            detail = ""
        elif proc.returncode < 0:
            detail = f"the KeOps test process was killed by signal {-proc.returncode}"
        else:
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        works, detail = False, f"the KeOps test did not finish within {timeout:.0f} s"
    from tta.errors import TTAError
    from tta.results import write_json_atomic

    record = known if isinstance(known, dict) else {}
    record[key] = [works, detail]
    try:
        write_json_atomic(path, record)
    except (OSError, TTAError):  # a read-only or full cache only costs a re-check next time
        pass
    return works, detail
