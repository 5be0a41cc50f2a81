"""JAX's promises beyond the core's conformance kit (test_layers.py runs the kit itself).

The kit accepts a backend refusing a primitive, and does not put max reductions on ties in
its shared cases (ggml routes a tied max's gradient to the first maximum); JAX promises
every primitive of the NumPy reference, and shares a tied max's gradient evenly like it.
"""

from __future__ import annotations

import mithril as ml
from mithril.models import Max
from mithril.testing import Case, check_case
from mithril_jax.ops import OPS as JAX_OPS
from mithril_numpy.ops import OPS as NUMPY_OPS


def test_every_numpy_primitive_has_a_jax_op() -> None:
    assert not set(NUMPY_OPS) - set(JAX_OPS), sorted(set(NUMPY_OPS) - set(JAX_OPS))


def test_max_reduction_shares_the_gradient_among_ties() -> None:
    case = Case("max_ties", "max", lambda: Max(axis=1), {"input": [4, 6]}, {"input": "ties"})
    check_case(case, ml.JaxBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64))
