"""JAX backend plugin for Mithril (the backend module, and jax, load on first attribute access)."""

from typing import Any

__all__ = ["JaxBackend"]


def __getattr__(name: str) -> Any:
    if name == "JaxBackend":
        from .backend import JaxBackend

        return JaxBackend
    raise AttributeError(f"module 'mithril_jax' has no attribute {name!r}")
