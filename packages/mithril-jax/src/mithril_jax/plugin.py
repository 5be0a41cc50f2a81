"""Entry point of the JAX plugin: registers the backend without importing jax."""

from mithril.plugins import hookimpl


@hookimpl
def mithril_register_backends(register):  # type: ignore[no-untyped-def]
    register("jax", "mithril_jax.backend:JaxBackend", attr="JaxBackend")
