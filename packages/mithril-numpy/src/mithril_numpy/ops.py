"""Forward implementations of the core primitives in NumPy (the reference semantics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril.backend import Kernel, OpImpl
from mithril.codegen import flatten_shape, keyword_call
from mithril.graph import Node

from . import kernels

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


POOL_ATTRS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")

OPS: dict[str, OpImpl] = {
    "linear": linear,
    "relu": "np.maximum({input}, 0)",
    "sigmoid": Kernel(sigmoid),
    "tanh": "np.tanh({input})",
    "exp": "np.exp({input})",
    "log": "np.log({input})",
    "sqrt": "np.sqrt({input})",
    "abs": "np.abs({input})",
    "neg": "-{input}",
    "square": "np.square({input})",
    "add": "{left} + {right}",
    "sub": "{left} - {right}",
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "{left} ** {right}",
    "maximum": "np.maximum({left}, {right})",
    "minimum": "np.minimum({left}, {right})",
    "matmul": "{left} @ {right}",
    "sum": "np.sum({input}, axis={axis}, keepdims={keepdim})",
    "mean": "np.mean({input}, axis={axis}, keepdims={keepdim})",
    "max": "np.max({input}, axis={axis}, keepdims={keepdim})",
    "transpose": "np.transpose({input}, {axes})",
    "reshape": "np.reshape({input}, {shape})",
    "flatten": flatten,
    "identity": "{input}",
    "conv2d": keyword_call("_k.conv2d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
    "max_pool2d": keyword_call("_k.max_pool2d", ("input",), POOL_ATTRS),
    "avg_pool2d": keyword_call("_k.avg_pool2d", ("input",), (*POOL_ATTRS, "count_include_pad", "divisor_override")),
    "batch_norm": keyword_call(
        "_k.batch_norm", ("input", "weight", "bias", "running_mean", "running_var"), ("eps", "momentum")
    ),
    "batch_norm_inference": keyword_call(
        "_k.batch_norm_inference", ("input", "weight", "bias", "running_mean", "running_var"), ("eps",)
    ),
    "layer_norm": keyword_call("_k.layer_norm", ("input", "weight", "bias"), ("normalized_shape", "eps")),
    "embedding": "{weight}[{input}]",
    "gelu": keyword_call("_k.gelu", ("input",), ("approximate",)),
    "leaky_relu": "np.where({input} > 0, {input}, {input} * {negative_slope})",
    "softmax": _axis_call("_k.softmax"),
    "log_softmax": _axis_call("_k.log_softmax"),
    "dropout": lambda n, a: f"_k.dropout({a['input']}, {n.attrs['p']!r}, _backend._rng)",
    "mse_loss": keyword_call("_k.mse_loss", ("input", "target"), ("reduction",)),
    "cross_entropy": keyword_call(
        "_k.cross_entropy", ("input", "target"), ("weight", "ignore_index", "reduction", "label_smoothing")
    ),
}

NAMESPACE: dict[str, Any] = {"np": np, "_k": kernels}
