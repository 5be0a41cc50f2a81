"""NumPy backend plugin for Mithril (the backend module loads on first attribute access)."""

from typing import Any

__all__ = ["NumpyBackend"]


def __getattr__(name: str) -> Any:
    if name == "NumpyBackend":
        from .backend import NumpyBackend

        return NumpyBackend
    raise AttributeError(f"module 'mithril_numpy' has no attribute {name!r}")
