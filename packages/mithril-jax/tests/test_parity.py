"""JAX's promise beyond the core's conformance kit (test_layers.py runs the kit itself).

The kit accepts a backend refusing a primitive; JAX refuses none. It lowers every core-set
primitive a forward graph can hold (jax.vjp differentiates, so the gradient forms that only
the core's backward graphs emit are not needed) and runs every declared primitive.
"""

from __future__ import annotations

import mithril as ml
from mithril.primitives import CORE_SET, PRIMITIVES, get
from mithril_jax.ops import OPS as JAX_OPS


def backward_only(name: str) -> bool:
    """A gradient form: a core primitive with a differentiable input but no gradient rule (backward graphs only)."""
    decl = get(name)
    return decl.core and decl.vjp is None and any(decl.differentiable(port.name) for port in decl.inputs)


def test_backward_only_names_exactly_the_gradient_forms() -> None:
    gradient_forms = {"conv_input_grad", "conv_weight_grad", "max_pool_grad", "avg_pool_grad", "embedding_grad"}
    assert {p for p in PRIMITIVES if backward_only(p)} == gradient_forms


def test_every_forward_core_primitive_has_a_jax_op() -> None:
    forward = {p for p in CORE_SET if not backward_only(p)}
    assert forward <= set(JAX_OPS), sorted(forward - set(JAX_OPS))


def test_every_declared_primitive_runs_on_jax() -> None:
    backend = ml.JaxBackend()
    assert not [p for p in PRIMITIVES if not backward_only(p) and not backend.supports(p)]
