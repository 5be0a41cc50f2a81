"""Markers and process settings of the PyTorch backend tests."""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Register the `cuda` marker; run torch single-threaded (tiny tensors, shared CI cores oversubscribe)."""
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped where torch sees none")
    torch.set_num_threads(1)
