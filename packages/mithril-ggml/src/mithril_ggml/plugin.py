"""Entry point of the GGML plugin: registers the backend without importing ggml."""

from mithril.plugins import hookimpl


@hookimpl
def mithril_register_backends(register):  # type: ignore[no-untyped-def]
    register("ggml", "mithril_ggml.backend:GGMLBackend", attr="GGMLBackend")
