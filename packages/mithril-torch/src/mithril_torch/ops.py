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

from . import kernels

__all__ = ["OPS", "NAMESPACE", "NON_DIFFERENTIABLE"]


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


def keyword_call(fn: str, inputs: tuple[str, ...], attrs: tuple[str, ...]) -> OpImpl:
    """A call of `fn` with every input (None when absent) positionally, then the named attributes."""

    def emit(node: Node, a: Mapping[str, str]) -> str:
        args = [a.get(k, "None") for k in inputs] + [repr(node.attrs[k]) for k in attrs]
        return f"{fn}({', '.join(args)})"

    return emit


def pool(fn: str, attrs: tuple[str, ...]) -> OpImpl:
    """F.max_pool2d / F.avg_pool2d directly on rank 3 or 4 inputs; other ranks go through a reshape."""

    def emit(node: Node, a: Mapping[str, str]) -> str:
        values = ", ".join(repr(node.attrs[k]) for k in attrs)
        shape = static_shape(node.inputs["input"])
        if shape is not None and len(shape) in (3, 4):
            return f"F.{fn}({a['input']}, {values})"
        return f"_k.pool_any_rank({fn!r}, {a['input']}, {values})"

    return emit


def batch_norm(node: Node, a: Mapping[str, str]) -> str:
    """Training batch norm: F.batch_norm alone without running statistics, else the state-updating helper."""
    eps, momentum = node.attrs["eps"], node.attrs["momentum"]
    weight, bias = a.get("weight", "None"), a.get("bias", "None")
    if "running_mean" not in a:
        return f"F.batch_norm({a['input']}, None, None, {weight}, {bias}, True, {momentum!r}, {eps!r})"
    return (
        f"_k.batch_norm({a['input']}, {weight}, {bias}, {a['running_mean']}, {a['running_var']}, {eps!r}, {momentum!r})"
    )


def batch_norm_inference(node: Node, a: Mapping[str, str]) -> str:
    """F.batch_norm in eval mode: normalises with the running statistics and does not update them."""
    weight, bias = a.get("weight", "None"), a.get("bias", "None")
    return (
        f"F.batch_norm({a['input']}, {a['running_mean']}, {a['running_var']}, {weight}, {bias}, False, 0.0, "
        f"{node.attrs['eps']!r})"
    )


def layer_norm(node: Node, a: Mapping[str, str]) -> str:
    """F.layer_norm over the last len(normalized_shape) axes, with optional weight and bias."""
    at = node.attrs
    return (
        f"F.layer_norm({a['input']}, {at['normalized_shape']!r}, {a.get('weight', 'None')}, "
        f"{a.get('bias', 'None')}, {at['eps']!r})"
    )


def cross_entropy(node: Node, a: Mapping[str, str]) -> str:
    """F.cross_entropy; class weights become a cached tensor of the input's dtype and device."""
    at = node.attrs
    weight = "None" if at["weight"] is None else f"_k.class_weight({at['weight']!r}, {a['input']})"
    return (
        f"F.cross_entropy({a['input']}, {a['target']}, {weight}, ignore_index={at['ignore_index']!r}, "
        f"reduction={at['reduction']!r}, label_smoothing={at['label_smoothing']!r})"
    )


POOL_ATTRS = ("kernel_size", "stride", "padding")

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
    "identity": "{input}",
    "conv2d": keyword_call("F.conv2d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
    "max_pool2d": pool("max_pool2d", (*POOL_ATTRS, "dilation", "ceil_mode")),
    "avg_pool2d": pool("avg_pool2d", (*POOL_ATTRS, "ceil_mode", "count_include_pad", "divisor_override")),
    "batch_norm": batch_norm,
    "batch_norm_inference": batch_norm_inference,
    "layer_norm": layer_norm,
    "embedding": "F.embedding({input}, {weight})",
    "gelu": "F.gelu({input}, approximate={approximate})",
    "leaky_relu": "F.leaky_relu({input}, {negative_slope})",
    "softmax": "torch.softmax({input}, {axis})",
    "log_softmax": "torch.log_softmax({input}, {axis})",
    "dropout": "_k.dropout({input}, {p}, _generator)",
    "mse_loss": "F.mse_loss({input}, {target}, reduction={reduction})",
    "cross_entropy": cross_entropy,
}

# Outputs that never carry a gradient: updated running statistics and the dropout mask.
NON_DIFFERENTIABLE: frozenset[tuple[str, str]] = frozenset(
    {("batch_norm", "running_mean_out"), ("batch_norm", "running_var_out"), ("dropout", "mask")}
)

NAMESPACE: dict[str, Any] = {"torch": torch, "F": F, "_k": kernels}
