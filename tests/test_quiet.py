"""The noise dropped before the result table (issue 15, item 5): KeOps's CPU-only line, Lightning's tips."""

import logging
import subprocess
import sys

import pytest
import torch

from tta._quiet import drop_lightning_tips, quiet_keops_on_cpu


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_lightning_tips_are_dropped_and_other_info_kept():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    from lightning_utilities.core import rank_zero

    logger = rank_zero.log  # where rank_zero_info writes (Lightning rebinds it to its own logger)
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        drop_lightning_tips()
        drop_lightning_tips()  # idempotent: one filter
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/)")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert records.messages == ["GPU available: False, used: False"]
    assert sum(type(f).__name__ == "_DropTips" for f in logger.filters) == 1


def test_keops_is_quiet_on_a_cpu_machine_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env: dict[str, str] = {}
    quiet_keops_on_cpu(env)
    assert env == {"KEOPS_VERBOSE": "0"}
    env = {"KEOPS_VERBOSE": "1"}  # the user's choice wins
    quiet_keops_on_cpu(env)
    assert env == {"KEOPS_VERBOSE": "1"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env = {}
    quiet_keops_on_cpu(env)  # with a GPU its messages are worth reading
    assert env == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only line is printed on CPU machines only")
def test_importing_keops_after_the_cli_quieting_prints_nothing():
    code = (
        "import os; os.environ.pop('KEOPS_VERBOSE', None)\n"
        "from tta._quiet import quiet_keops_on_cpu; quiet_keops_on_cpu()\n"
        "import pykeops\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    loud = subprocess.run(
        [sys.executable, "-c", "import os; os.environ.pop('KEOPS_VERBOSE', None)\nimport pykeops\n"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert "[KeOps] Warning" in loud.stdout + loud.stderr  # the line this removes
    assert "[KeOps]" not in quiet.stdout + quiet.stderr
