"""Forward implementations of the core primitives as jnp/lax expressions.

Gradients come from jax's own rules, so an entry here must also differentiate like the
NumPy reference (torch autograd's conventions): `jax.nn.relu` has gradient 0 at 0,
`jnp.maximum`/`jnp.minimum` split a tie's gradient in half, `jnp.max` shares it evenly
among tied maxima; `abs` needs its own rule because `lax.abs` gives gradient 1 at 0, and
max pooling one that sends a window's gradient to its first maximum (see kernels.py).
Random primitives (dropout) read the per-call PRNG key `_rng_key`, an argument the
lowering adds to the generated functions of models that contain one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mithril.backend import OpImpl
from mithril.codegen import flatten_shape, keyword_call
from mithril.graph import Node

from . import kernels

__all__ = ["OPS", "NAMESPACE", "RANDOM", "RNG_KEY", "RNG_STREAMS", "abs_"]

RANDOM = frozenset({"dropout"})
RNG_KEY = "_rng_key"
RNG_STREAMS = "_rng_streams"


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
    return f"jnp.reshape({a['input']}, {flatten_shape(node, a['input'])})"


def dropout(node: Node, a: Mapping[str, str]) -> str:
    """(output, mask) drawn from the call's key, on this node's own stream."""
    return f"_k.dropout({a['input']}, {node.attrs['p']!r}, {RNG_KEY}, {RNG_STREAMS}[{node.path!r}])"


def gelu(node: Node, a: Mapping[str, str]) -> str:
    """torch's GELU: the exact erf form for approximate='none', else the tanh form."""
    return f"jax.nn.gelu({a['input']}, approximate={node.attrs['approximate'] == 'tanh'})"


POOL_ATTRS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
NORM_INPUTS = ("input", "weight", "bias", "running_mean", "running_var")

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
    "identity": "{input}",
    "conv2d": keyword_call("_k.conv2d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
    "max_pool2d": keyword_call("_k.max_pool2d", ("input",), POOL_ATTRS),
    "avg_pool2d": keyword_call("_k.avg_pool2d", ("input",), (*POOL_ATTRS, "count_include_pad", "divisor_override")),
    "batch_norm": keyword_call("_k.batch_norm", NORM_INPUTS, ("eps", "momentum")),
    "batch_norm_inference": keyword_call("_k.batch_norm_inference", NORM_INPUTS, ("eps",)),
    "layer_norm": keyword_call("_k.layer_norm", ("input", "weight", "bias"), ("normalized_shape", "eps")),
    "embedding": "jnp.take({weight}, {input}, axis=0)",
    "gelu": gelu,
    "leaky_relu": "jnp.where({input} > 0, {input}, {input} * {negative_slope})",
    "softmax": "jax.nn.softmax({input}, axis={axis})",
    "log_softmax": "jax.nn.log_softmax({input}, axis={axis})",
    "dropout": dropout,
    "mse_loss": keyword_call("_k.mse_loss", ("input", "target"), ("reduction",)),
    "cross_entropy": keyword_call(
        "_k.cross_entropy", ("input", "target"), ("weight", "ignore_index", "reduction", "label_smoothing")
    ),
}

NAMESPACE: dict[str, Any] = {"jax": jax, "jnp": jnp, "lax": lax, "_abs": abs_, "_k": kernels}
