"""PyTorch backend plugin for Mithril (torch is imported on first attribute access, not by the entry point)."""

from typing import Any

__all__ = ["TorchBackend"]


def __getattr__(name: str) -> Any:
    if name == "TorchBackend":
        from .backend import TorchBackend

        return TorchBackend
    raise AttributeError(f"module 'mithril_torch' has no attribute {name!r}")
