"""Forward implementations of the core primitives in NumPy (the reference semantics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril.backend import Kernel, OpImpl
from mithril.codegen import static_shape
from mithril.graph import Node
from mithril.models.rules import normalize_axes

__all__ = ["OPS", "NAMESPACE"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)


def linear(node: Node, a: Mapping[str, str]) -> str:
    core = f"{a['input']} @ {a['weight']}.T"
    return f"{core} + {a['bias']}" if "bias" in a else core


def flatten(node: Node, a: Mapping[str, str]) -> str:
    shape = static_shape(node.inputs["input"])
    assert shape is not None, "flatten needs the input rank at compile time"
    rank = len(shape)
    if rank == 0:
        return f"{a['input']}.reshape(1)"
    s = normalize_axes(node.attrs["start_dim"], rank)[0]
    e = normalize_axes(node.attrs["end_dim"], rank)[0]
    x = a["input"]
    return f"{x}.reshape({x}.shape[:{s}] + (-1,) + {x}.shape[{e + 1}:])"


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
}

NAMESPACE: dict[str, Any] = {"np": np}
