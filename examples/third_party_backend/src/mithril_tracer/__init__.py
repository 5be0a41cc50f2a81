"""mithril-tracer: a third-party Mithril backend that records every primitive it executes.

Importing this package imports neither NumPy's backend nor the generated code machinery;
`TracerBackend` and the record types load on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TracerBackend", "OpRecord", "Trace"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'mithril_tracer' has no attribute {name!r}")
