"""Forward implementations of the core primitives as direct torch calls.

Each entry is a template over input keys and attributes, or a function of the node
that specialises on static shapes; add a primitive by adding one entry. Semantics
follow the NumPy reference (mithril_numpy.ops); gradients come from torch autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mithril.backend import OpImpl
from mithril.codegen import static_shape
from mithril.graph import Node
from mithril.models.rules import normalize_axes

__all__ = ["OPS", "NAMESPACE"]


def linear(node: Node, a: Mapping[str, str]) -> str:
    """One fused F.linear (addmm) call, with or without bias."""
    bias = f", {a['bias']}" if "bias" in a else ""
    return f"F.linear({a['input']}, {a['weight']}{bias})"


def reduction(fn: str) -> Callable[[Node, Mapping[str, str]], str]:
    """A reduction with NumPy's axis/keepdim semantics (axis=None: all axes; () : none)."""

    def impl(node: Node, a: Mapping[str, str]) -> str:
        x, axis, keepdim = a["input"], node.attrs["axis"], node.attrs["keepdim"]
        if axis is None and not keepdim:
            return f"{fn}({x})"
        shape = static_shape(node.inputs["input"])
        if shape is None:
            dims = f"tuple(range({x}.dim()))" if axis is None else repr(axis)
            return f"{fn}({x}, dim={dims}, keepdim={keepdim!r})"
        axes = normalize_axes(axis, len(shape))
        if not axes and axis is not None:
            return x
        return f"{fn}({x}, dim={axes!r}, keepdim={keepdim!r})"

    return impl


def transpose(node: Node, a: Mapping[str, str]) -> str:
    """torch.permute; axes=None reverses them like numpy.transpose."""
    x, axes = a["input"], node.attrs["axes"]
    if axes is not None:
        return f"torch.permute({x}, {tuple(axes)!r})"
    shape = static_shape(node.inputs["input"])
    if shape is None:
        return f"{x}.permute(*range({x}.dim() - 1, -1, -1))"
    return f"torch.permute({x}, {tuple(range(len(shape) - 1, -1, -1))!r})"


OPS: dict[str, OpImpl] = {
    "linear": linear,
    "relu": "torch.relu({input})",
    "sigmoid": "torch.sigmoid({input})",
    "tanh": "torch.tanh({input})",
    "exp": "torch.exp({input})",
    "log": "torch.log({input})",
    "sqrt": "torch.sqrt({input})",
    "abs": "torch.abs({input})",
    "neg": "torch.neg({input})",
    "square": "torch.square({input})",
    "add": "{left} + {right}",
    "sub": "{left} - {right}",
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "torch.pow({left}, {right})",
    "maximum": "torch.maximum({left}, {right})",
    "minimum": "torch.minimum({left}, {right})",
    "matmul": "torch.matmul({left}, {right})",
    "sum": reduction("torch.sum"),
    "mean": reduction("torch.mean"),
    "max": reduction("torch.amax"),
    "transpose": transpose,
    "reshape": "torch.reshape({input}, {shape})",
    "flatten": "torch.flatten({input}, {start_dim}, {end_dim})",
}

NAMESPACE: dict[str, Any] = {"torch": torch, "F": F}
