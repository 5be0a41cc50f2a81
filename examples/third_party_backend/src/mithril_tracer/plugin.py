"""Entry point module of the tracer plugin: names the backend class without importing it."""

from __future__ import annotations

from collections.abc import Callable

from mithril.plugins import hookimpl


@hookimpl
def mithril_register_backends(register: Callable[..., None]) -> None:
    """Register `tracer` lazily; `mithril.TracerBackend` then resolves to the class."""
    register("tracer", "mithril_tracer.backend:TracerBackend", attr="TracerBackend")
