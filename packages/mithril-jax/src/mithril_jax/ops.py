"""Forward implementations of the core primitives as jnp/lax expressions.

Gradients come from jax's own rules, so an entry here must also differentiate like the
NumPy reference (torch autograd's conventions), NaN inputs included: relu, abs, sign,
maximum, minimum and max get their own rules (`relu_`, ...) where jax's differ from torch's
(relu's gradient at NaN, abs's at 0, a NaN's partner in maximum, a max over a slice holding
NaN), and max pooling one that sends a window's gradient to its first maximum (see windows.py).
Random primitives (declared `random`, e.g. dropout_mask) read the per-call PRNG key
`_rng_key`, an argument the lowering adds to the generated functions of models that
contain one. Dropout itself is left to its decomposition (dropout_mask, then mul): the
mask is one of its outputs, so a fused lowering would save nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mithril.backend import OpImpl
from mithril.codegen import CONSTANT, flatten_shape, keyword_call
from mithril.graph import Node

from . import indexing as _ix
from . import kernels, windows

__all__ = [
    "OPS",
    "NAMESPACE",
    "RNG_KEY",
    "RNG_STREAMS",
    "FLOAT_DTYPE",
    "abs_",
    "amax_",
    "maximum_",
    "minimum_",
    "relu_",
    "sign_",
]

RNG_KEY = "_rng_key"
RNG_STREAMS = "_rng_streams"
# The generated code's name for the backend's float dtype (the lowering puts it in the namespace).
FLOAT_DTYPE = "_float_dtype"


def sign_(x: jax.Array) -> jax.Array:
    """-1, 0 or 1 by the sign of x, and 0 for NaN as torch.sign (jnp.sign keeps NaN)."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


@jax.custom_jvp
def abs_(x: jax.Array) -> jax.Array:
    """|x| with gradient sign(x), hence 0 at 0 and at NaN like torch and the NumPy reference."""
    return jnp.abs(x)


@abs_.defjvp
def _abs_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return jnp.abs(x), t * sign_(x)


@jax.custom_jvp
def relu_(x: jax.Array) -> jax.Array:
    """max(x, 0), NaN kept; gradient 0 where x <= 0, else passed through, NaN included (torch's rule)."""
    return jax.nn.relu(x)


@relu_.defjvp
def _relu_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return jax.nn.relu(x), jnp.where(x <= 0, jnp.zeros_like(t), t)


def _extreme(pick: Any, loses: Any) -> Any:
    """jnp.maximum or jnp.minimum with torch's gradient: the loser gets 0, a tie half each, and both
    operands the whole tangent where either is NaN (jax gives NaN's partner 0)."""

    @jax.custom_jvp
    def extreme(x: jax.Array, y: jax.Array) -> jax.Array:
        return pick(x, y)

    @extreme.defjvp
    def _jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]) -> Any:
        (x, y), (tx, ty) = primals, tangents
        half = jnp.where(x == y, 0.5, 1.0).astype(tx.dtype)
        share_x = jnp.where(loses(x, y), 0.0, half).astype(tx.dtype)
        share_y = jnp.where(loses(y, x), 0.0, half).astype(ty.dtype)
        return pick(x, y), tx * share_x + ty * share_y

    return extreme


maximum_ = _extreme(jnp.maximum, lambda a, b: a < b)
minimum_ = _extreme(jnp.minimum, lambda a, b: a > b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def amax_(x: jax.Array, axis: Any, keepdims: bool) -> jax.Array:
    """jnp.max with torch's amax gradient: tied maxima share it, and a slice holding NaN gets NaN
    throughout (jax gives it 0)."""
    return jnp.max(x, axis=axis, keepdims=keepdims)


def _amax_fwd(x: jax.Array, axis: Any, keepdims: bool) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    top = jnp.max(x, axis=axis, keepdims=True)
    return jnp.max(x, axis=axis, keepdims=keepdims), (x, top)


def _amax_bwd(axis: Any, keepdims: bool, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    """(g / count) where x is a maximum; NaN over a slice with no maximum (it holds NaN), as torch's
    0 * (g / 0). Written with where: XLA turns a product with a 0/1 mask into a select, dropping the NaN."""
    x, top = res
    if not keepdims:
        g = jnp.expand_dims(g, tuple(range(x.ndim)) if axis is None else axis)
    mask = x == top
    count = jnp.sum(mask, axis=axis, keepdims=True).astype(g.dtype)
    share = jnp.where(count == 0, jnp.nan, g / count)
    return (jnp.where(mask | (count == 0), share, jnp.zeros_like(share)),)


amax_.defvjp(_amax_fwd, _amax_bwd)


def linear(node: Node, a: Mapping[str, str]) -> str:
    """input @ weight.T (+ bias), weight stored [out, in] like torch.nn.Linear, as one dot_general over the
    weight's second axis: XLA's CPU backend fuses `input @ weight.T + bias`'s transpose and add into a loop
    ten times slower than its dot (GPT-2's 3072 x 768 matrix for one row: 1.29 ms against 0.125)."""
    x = a["input"]
    core = f"lax.dot_general({x}, {a['weight']}, ((({x}.ndim - 1,), (1,)), ((), ())))"
    return f"{core} + {a['bias']}" if "bias" in a else core


def flatten(node: Node, a: Mapping[str, str]) -> str:
    """torch.flatten(start_dim, end_dim) as one reshape; needs the input rank at compile time."""
    return f"jnp.reshape({a['input']}, {flatten_shape(node, a['input'])})"


def dropout_mask(node: Node, a: Mapping[str, str]) -> str:
    """A mask shaped like `like`, drawn from the call's key on this node's own stream."""
    return f"_k.dropout_mask({a['like']}, {node.attrs['p']!r}, {RNG_KEY}, {RNG_STREAMS}[{node.path!r}])"


def as_float(op: str) -> OpImpl:
    """A comparison whose boolean result becomes 1.0/0.0 in the backend's float dtype."""
    return lambda node, a: f"({a['left']} {op} {a['right']}).astype({FLOAT_DTYPE})"


def gelu(node: Node, a: Mapping[str, str]) -> str:
    """torch's GELU: the exact erf form for approximate='none', else the tanh form."""
    return f"jax.nn.gelu({a['input']}, approximate={node.attrs['approximate'] == 'tanh'})"


CONV = ("stride", "padding", "dilation", "groups")
MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
NORM_INPUTS = ("input", "weight", "bias", "running_mean", "running_var")

OPS: dict[str, OpImpl] = {
    "scalar": CONSTANT,
    "constant": CONSTANT,
    "linear": linear,
    "relu": "_relu({input})",
    "sigmoid": "jax.nn.sigmoid({input})",
    "tanh": "jnp.tanh({input})",
    "exp": "jnp.exp({input})",
    "log": "jnp.log({input})",
    "sqrt": "jnp.sqrt({input})",
    "abs": "_abs({input})",
    "sign": "_sign({input})",
    "erf": "lax.erf({input})",
    "sin": "jnp.sin({input})",
    "cos": "jnp.cos({input})",
    "silu": "jax.nn.silu({input})",
    "neg": "-{input}",
    "square": "jnp.square({input})",
    "add": "{left} + {right}",
    "sub": "{left} - {right}",
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "{left} ** {right}",
    "maximum": "_maximum({left}, {right})",
    "minimum": "_minimum({left}, {right})",
    "greater": as_float(">"),
    "equal": as_float("=="),
    "where": "jnp.where({condition}, {left}, {right})",
    "matmul": "{left} @ {right}",
    "sum": "jnp.sum({input}, axis={axis}, keepdims={keepdim})",
    "mean": "jnp.mean({input}, axis={axis}, keepdims={keepdim})",
    "max": "_amax({input}, {axis}, {keepdim})",
    "expand_reduced": keyword_call("_k.expand_reduced", ("input", "like"), ("axis", "keepdim", "scale")),
    "sum_like": "_k.sum_like({input}, {like})",
    "expand_like": "jnp.broadcast_to({input}, jnp.shape({like}))",
    "reshape_like": "jnp.reshape({input}, jnp.shape({like}))",
    "transpose": "jnp.transpose({input}, {axes})",
    "swapaxes": "jnp.swapaxes({input}, {axis0}, {axis1})",
    "reshape": "jnp.reshape({input}, {shape})",
    "flatten": flatten,
    "identity": "{input}",
    "conv": keyword_call("_w.conv", ("input", "weight", "bias"), CONV),
    "max_pool": keyword_call("_w.max_pool", ("input",), MAX_POOL),
    "avg_pool": keyword_call("_w.avg_pool", ("input",), AVG_POOL),
    "batch_norm": keyword_call("_k.batch_norm", NORM_INPUTS, ("eps", "momentum")),
    "batch_norm_inference": keyword_call("_k.batch_norm_inference", NORM_INPUTS, ("eps",)),
    "layer_norm": keyword_call("_k.layer_norm", ("input", "weight", "bias"), ("normalized_shape", "eps")),
    "group_norm": keyword_call("_k.group_norm", ("input", "weight", "bias"), ("num_groups", "eps")),
    "slice": "_ix.slice_({input}, {index})",
    "slice_grad": "_ix.slice_grad({input}, {like}, {index})",
    "concat": "jnp.concatenate(({left}, {right}), axis={axis})",
    "gather": "_ix.gather({input}, {index}, {axis})",
    "gather_grad": "_ix.gather_grad({input}, {index}, {like}, {axis})",
    "cumsum": "jnp.cumsum({input}, axis={axis})",
    "tril": "jnp.tril({input}, {diagonal})",
    "triu": "jnp.triu({input}, {diagonal})",
    "embedding": "jnp.take({weight}, {input}, axis=0)",
    "one_hot": f"jax.nn.one_hot({{input}}, {{num_classes}}, dtype={FLOAT_DTYPE})",
    "gelu": gelu,
    "leaky_relu": "jnp.where({input} > 0, {input}, {input} * {negative_slope})",
    "softmax": "jax.nn.softmax({input}, axis={axis})",
    "log_softmax": "jax.nn.log_softmax({input}, axis={axis})",
    "dropout_mask": dropout_mask,
    "mse_loss": keyword_call("_k.mse_loss", ("input", "target"), ("reduction",)),
    "cross_entropy": keyword_call(
        "_k.cross_entropy", ("input", "target"), ("weight", "ignore_index", "reduction", "label_smoothing")
    ),
}

NAMESPACE: dict[str, Any] = {
    "jax": jax,
    "jnp": jnp,
    "lax": lax,
    "_abs": abs_,
    "_sign": sign_,
    "_relu": relu_,
    "_maximum": maximum_,
    "_minimum": minimum_,
    "_amax": amax_,
    "_k": kernels,
    "_w": windows,
    "_ix": _ix,
}

# The sequence primitives (arange, attention) live in their own module.
from . import attention as _attention  # noqa: E402

OPS.update(_attention.OPS)
NAMESPACE.update(_attention.NAMESPACE)
