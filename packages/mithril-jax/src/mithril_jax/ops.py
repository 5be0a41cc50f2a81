"""Forward implementations of the core primitives as jnp/lax expressions.

Gradients come from jax's own rules, so an entry here must also differentiate like the
NumPy reference (torch autograd's conventions): `jax.nn.relu` has gradient 0 at 0,
`jnp.maximum`/`jnp.minimum` split a tie's gradient in half, `jnp.max` shares it evenly
among tied maxima; `abs` needs its own rule because `lax.abs` gives gradient 1 at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mithril.backend import OpImpl
from mithril.codegen import static_shape
from mithril.graph import Node
from mithril.models.rules import normalize_axes

__all__ = ["OPS", "NAMESPACE", "abs_"]


@jax.custom_jvp
def abs_(x: jax.Array) -> jax.Array:
    """|x| with gradient sign(x), hence 0 at 0 like torch and the NumPy reference."""
    return jnp.abs(x)


@abs_.defjvp
def _abs_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return jnp.abs(x), t * jnp.sign(x)


def linear(node: Node, a: Mapping[str, str]) -> str:
    """input @ weight.T (+ bias), weight stored [out, in] like torch.nn.Linear."""
    core = f"{a['input']} @ {a['weight']}.T"
    return f"{core} + {a['bias']}" if "bias" in a else core


def flatten(node: Node, a: Mapping[str, str]) -> str:
    """torch.flatten(start_dim, end_dim) as one reshape; needs the input rank at compile time."""
    shape = static_shape(node.inputs["input"])
    if shape is None:
        raise ValueError(f"{node.path}: flatten needs the rank of its input at compile time; give ml.compile shapes=")
    rank = len(shape)
    x = a["input"]
    if rank == 0:
        return f"jnp.reshape({x}, (1,))"
    s = normalize_axes(node.attrs["start_dim"], rank)[0]
    e = normalize_axes(node.attrs["end_dim"], rank)[0]
    return f"jnp.reshape({x}, {x}.shape[:{s}] + (-1,) + {x}.shape[{e + 1}:])"


OPS: dict[str, OpImpl] = {
    "linear": linear,
    "relu": "jax.nn.relu({input})",
    "sigmoid": "jax.nn.sigmoid({input})",
    "tanh": "jnp.tanh({input})",
    "exp": "jnp.exp({input})",
    "log": "jnp.log({input})",
    "sqrt": "jnp.sqrt({input})",
    "abs": "_abs({input})",
    "neg": "-{input}",
    "square": "jnp.square({input})",
    "add": "{left} + {right}",
    "sub": "{left} - {right}",
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "{left} ** {right}",
    "maximum": "jnp.maximum({left}, {right})",
    "minimum": "jnp.minimum({left}, {right})",
    "matmul": "{left} @ {right}",
    "sum": "jnp.sum({input}, axis={axis}, keepdims={keepdim})",
    "mean": "jnp.mean({input}, axis={axis}, keepdims={keepdim})",
    "max": "jnp.max({input}, axis={axis}, keepdims={keepdim})",
    "transpose": "jnp.transpose({input}, {axes})",
    "reshape": "jnp.reshape({input}, {shape})",
    "flatten": flatten,
}

NAMESPACE: dict[str, Any] = {"jax": jax, "jnp": jnp, "lax": lax, "_abs": abs_}
