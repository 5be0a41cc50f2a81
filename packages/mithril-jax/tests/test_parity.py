"""JAX's promise beyond the core's conformance kit (test_layers.py runs the kit itself).

The kit accepts a backend refusing a primitive; JAX promises every primitive of the NumPy reference.
"""

from __future__ import annotations

from mithril_jax.ops import OPS as JAX_OPS
from mithril_numpy.ops import OPS as NUMPY_OPS


def test_every_numpy_primitive_has_a_jax_op() -> None:
    assert not set(NUMPY_OPS) - set(JAX_OPS), sorted(set(NUMPY_OPS) - set(JAX_OPS))
