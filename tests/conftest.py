"""Shared test setup: make sibling helper modules importable, seed, `gpu` marker auto-skip."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
REFERENCE_DIR = TESTS_DIR / "fixtures" / "reference"

if str(TESTS_DIR) not in sys.path:  # parity_var.py / parity_llamagen.py live next to this file
    sys.path.insert(0, str(TESTS_DIR))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    # training steps set the thread count (--threads 1 in their smoke tests); a later test comparing pixels
    # bit for bit with a subprocess would then sum in another order
    torch.set_num_threads(threads)
