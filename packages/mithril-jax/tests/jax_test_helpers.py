"""Helpers shared by the JAX plugin's tests: the quick start's param source."""

from __future__ import annotations

import warnings
from typing import Any

import mithril as ml


def torch_available() -> bool:
    """Whether the mithril-torch plugin is installed and loads."""
    info = ml.available_backends().get("torch")
    return info is not None and info.error is None


def source_backend(dtype: Any) -> ml.Backend:
    """TorchBackend as in the quick start; NumpyBackend (with a visible warning) until the torch plugin exists."""
    if torch_available():
        return ml.TorchBackend(dtype=dtype)
    warnings.warn("mithril-torch is not installed: the quick start's torch params come from NumpyBackend", stacklevel=2)
    return ml.NumpyBackend(dtype=dtype)
