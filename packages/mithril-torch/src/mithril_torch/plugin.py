"""Entry point of the PyTorch plugin: registers the backend without importing torch."""

from mithril.plugins import hookimpl


@hookimpl
def mithril_register_backends(register):  # type: ignore[no-untyped-def]
    register("torch", "mithril_torch.backend:TorchBackend", attr="TorchBackend")
