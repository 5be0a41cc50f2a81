"""Forward implementations of the core primitives in NumPy (the reference semantics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril.backend import Kernel, OpImpl
from mithril.codegen import CONSTANT, flatten_shape, keyword_call, static_shape
from mithril.graph import Edge, Node

from . import indexing as _ix
from . import kernels, windows

__all__ = ["OPS", "NAMESPACE"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)


def linear(node: Node, a: Mapping[str, str]) -> str:
    core = f"{a['input']} @ {a['weight']}.T"
    return f"{core} + {a['bias']}" if "bias" in a else core


def flatten(node: Node, a: Mapping[str, str]) -> str:
    return f"{a['input']}.reshape({flatten_shape(node, a['input'])})"


def _axis_call(fn: str) -> OpImpl:
    return lambda n, a: f"{fn}({a['input']}, {n.attrs['axis']!r})"


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise (math.erf per element: NumPy has no vectorised erf)."""
    return kernels._erf(x).astype(x.dtype)


# Consumers that treat a boolean mask exactly like its 0.0/1.0 float form (NumPy casts it in the loop).
_MASK_READERS = {("mul", "left"), ("mul", "right"), ("where", "condition")}


def _complements(node: Node) -> bool:
    """Whether `node` is sub(1.0, comparison): the comparison's complement (ReLU's gradient mask)."""
    if node.primitive != "sub":
        return False
    one, mask = node.inputs["left"].producer, node.inputs["right"].producer
    return (
        one is not None
        and one.primitive == "scalar"
        and one.attrs["value"] == 1.0
        and mask is not None
        and mask.primitive in ("greater", "equal")
    )


def _is_mask(edge: Edge | None) -> bool:
    """Whether `edge` may be emitted as a boolean mask: a comparison or its complement."""
    producer = None if edge is None else edge.producer
    return producer is not None and (producer.primitive in ("greater", "equal") or _complements(producer))


def _reads_mask(node: Node, key: str) -> bool:
    """Whether `node` reads input `key` as a mask without changing its result's dtype."""
    if node.primitive == "sub":
        return key == "right" and _complements(node)
    if (node.primitive, key) not in _MASK_READERS:
        return False
    other = node.inputs.get("right" if key == "left" else "left")
    return node.primitive == "where" or not _is_mask(other)


def _bare(edge: Edge) -> bool:
    """Whether every consumer of internal `edge` reads it as a mask, so it stays boolean."""
    return edge.role == "internal" and all(_reads_mask(n, k) for n, k in edge.consumers)


def _as_float(expr: str) -> OpImpl:
    """A comparison: 0.0/1.0 in the left operand's dtype, or the bare boolean mask when every consumer
    only multiplies by it or selects with it (ReLU's gradient: g * (x > 0), as written by hand)."""

    def emit(node: Node, a: Mapping[str, str]) -> str:
        mask = f"({expr.format(**a)})"
        if _bare(node.outputs["output"]):
            return mask
        return f"{mask}.astype({a['left']}.dtype)"

    return emit


def _sub(node: Node, a: Mapping[str, str]) -> str:
    """left - right; 1 - mask as the inverted boolean mask (exact: 1 - [x == y] is [x != y], NaN included)."""
    if not _complements(node) or not _bare(node.inputs["right"]):
        return f"{a['left']} - {a['right']}"
    mask = f"(~{a['right']})"
    return mask if _bare(node.outputs["output"]) else f"{mask}.astype({a['left']}.dtype)"


def _sum_like(node: Node, a: Mapping[str, str]) -> str:
    """Static shapes: nothing, or one sum over known axes; otherwise the run-time version."""
    g, like = static_shape(node.inputs["input"]), static_shape(node.inputs["like"])
    if g is None or like is None or None in g or None in like:
        return f"_k.sum_like({a['input']}, {a['like']})"
    if g == like:
        return a["input"]
    lead = len(g) - len(like)
    kept = tuple(i + lead for i, n in enumerate(like) if n == 1 and g[i + lead] != 1)
    axes = tuple(range(lead)) + kept
    summed = f"np.add.reduce({a['input']}, {axes[0] if len(axes) == 1 else axes})"  # ndarray.sum's own call
    return f"{summed}.reshape({like})" if kept else summed


def _swapaxes(node: Node, a: Mapping[str, str]) -> str:
    """The last two axes of a matrix: `.T`; otherwise ndarray.swapaxes (a view either way)."""
    shape = static_shape(node.inputs["input"])
    axes = {node.attrs["axis0"], node.attrs["axis1"]}
    if shape is not None and len(shape) == 2 and axes in ({-1, -2}, {0, 1}):
        return f"{a['input']}.T"
    return f"{a['input']}.swapaxes({node.attrs['axis0']}, {node.attrs['axis1']})"


WINDOW = ("stride", "padding", "dilation", "groups")
MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

OPS: dict[str, OpImpl] = {
    "scalar": CONSTANT,
    "constant": CONSTANT,
    "identity": "{input}",
    "linear": linear,
    "relu": "np.maximum({input}, 0)",
    "sigmoid": Kernel(sigmoid),
    "tanh": "np.tanh({input})",
    "exp": "np.exp({input})",
    "log": "np.log({input})",
    "sqrt": "np.sqrt({input})",
    "abs": "np.abs({input})",
    "sign": "np.subtract({input} > 0, {input} < 0, dtype={input}.dtype)",
    "erf": Kernel(_erf),
    "sin": "np.sin({input})",
    "cos": "np.cos({input})",
    "neg": "-{input}",
    "square": "np.square({input})",
    "add": "{left} + {right}",
    "sub": _sub,
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "{left} ** {right}",
    "maximum": "np.maximum({left}, {right})",
    "minimum": "np.minimum({left}, {right})",
    "greater": _as_float("{left} > {right}"),
    "equal": _as_float("{left} == {right}"),
    "where": "np.where({condition}, {left}, {right})",
    "matmul": "{left} @ {right}",
    "sum": "np.sum({input}, axis={axis}, keepdims={keepdim})",
    "mean": "np.mean({input}, axis={axis}, keepdims={keepdim})",
    "max": "np.max({input}, axis={axis}, keepdims={keepdim})",
    "expand_reduced": keyword_call("_k.expand_reduced", ("input", "like"), ("axis", "keepdim", "scale")),
    "sum_like": _sum_like,
    "expand_like": "np.broadcast_to({input}, np.shape({like}))",
    "reshape_like": "np.reshape({input}, np.shape({like}))",
    "transpose": "np.transpose({input}, {axes})",
    "swapaxes": _swapaxes,
    "reshape": "np.reshape({input}, {shape})",
    "flatten": flatten,
    "conv": keyword_call("_w.conv", ("input", "weight", "bias"), WINDOW),
    "conv_input_grad": keyword_call("_w.conv_input_grad", ("input", "weight", "like"), WINDOW),
    "conv_weight_grad": keyword_call("_w.conv_weight_grad", ("input", "data", "like"), WINDOW),
    "max_pool": keyword_call("_w.max_pool", ("input",), MAX_POOL),
    "max_pool_grad": keyword_call("_w.max_pool_grad", ("input", "like"), MAX_POOL),
    "avg_pool": keyword_call("_w.avg_pool", ("input",), AVG_POOL),
    "avg_pool_grad": keyword_call("_w.avg_pool_grad", ("input", "like"), AVG_POOL),
    "batch_norm": keyword_call(
        "_k.batch_norm", ("input", "weight", "bias", "running_mean", "running_var"), ("eps", "momentum")
    ),
    "batch_norm_inference": keyword_call(
        "_k.batch_norm_inference", ("input", "weight", "bias", "running_mean", "running_var"), ("eps",)
    ),
    "layer_norm": keyword_call("_k.layer_norm", ("input", "weight", "bias"), ("normalized_shape", "eps")),
    "slice": _ix.emit_slice,
    "slice_grad": _ix.emit_slice_grad,
    "concat": "np.concatenate(({left}, {right}), axis={axis})",
    "gather": "_ix.gather({input}, {index}, {axis})",
    "gather_grad": "_ix.gather_grad({input}, {index}, {like}, {axis})",
    "cumsum": "np.cumsum({input}, axis={axis})",
    "tril": "np.tril({input}, {diagonal})",
    "triu": "np.triu({input}, {diagonal})",
    "embedding": "{weight}[{input}]",
    "embedding_grad": "_k.embedding_grad({input}, {indices}, {like})",
    "one_hot": lambda n, a: (
        f"_k.one_hot({a['input']}, {n.attrs['num_classes']!r}, _backend.native_dtype(_backend.dtype))"
    ),
    "gelu": keyword_call("_k.gelu", ("input",), ("approximate",)),
    "softmax": _axis_call("_k.softmax"),
    "log_softmax": _axis_call("_k.log_softmax"),
    "dropout_mask": lambda n, a: f"_k.dropout_mask({a['like']}, {n.attrs['p']!r}, _backend._rng)",
    "dropout": lambda n, a: f"_k.dropout({a['input']}, {n.attrs['p']!r}, _backend._rng)",
    "mse_loss": keyword_call("_k.mse_loss", ("input", "target"), ("reduction",)),
    "cross_entropy": keyword_call(
        "_k.cross_entropy", ("input", "target"), ("weight", "ignore_index", "reduction", "label_smoothing")
    ),
    "cross_entropy_grad": "_k.cross_entropy_grad({input}, {target}, {gradient})",
}

NAMESPACE: dict[str, Any] = {"np": np, "_k": kernels, "_w": windows, "_ix": _ix}

# The sequence primitives (arange, attention) live in their own module.
from . import attention as _attention  # noqa: E402

OPS.update(_attention.OPS)
