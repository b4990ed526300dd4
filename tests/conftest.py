"""Shared pytest configuration.

Tests run single-threaded: their tensors are small, and on a loaded 2-core machine intra-op threading
makes tiny operations many times slower, not faster.
"""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("TTA_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
