"""Markers and process settings of the PyTorch backend tests; puts this directory on sys.path.

The path matters under the root pyproject's --import-mode=importlib (a run from the repository
root), where the test modules would not otherwise find torch_devices.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def pytest_configure(config: pytest.Config) -> None:
    """Register the `cuda` marker; run torch single-threaded (tiny tensors, shared CI cores oversubscribe)."""
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped where torch sees none")
    torch.set_num_threads(1)
