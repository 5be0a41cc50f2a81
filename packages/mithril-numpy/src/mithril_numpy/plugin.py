"""Entry point of the NumPy plugin: registers the backend without importing it."""

from mithril.plugins import hookimpl


@hookimpl
def mithril_register_backends(register):  # type: ignore[no-untyped-def]
    register("numpy", "mithril_numpy.backend:NumpyBackend", attr="NumpyBackend")
