"""Forward implementations of the primitives torch lowers natively, as direct torch calls.

Each entry is a template over input keys and attributes, or a function of the node
that specialises on static shapes; add a primitive by adding one entry. Semantics
follow the NumPy reference (mithril_numpy.ops); gradients come from torch autograd, so
the gradient forms of the core set (conv_input_grad, ...) are not needed. Dropout is
left to its decomposition (dropout_mask, then mul): its mask is an output, so a fused
lowering would save nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mithril.backend import OpImpl
from mithril.codegen import CONSTANT, keyword_call, static_shape
from mithril.graph import Node
from mithril.models.rules import normalize_axes

from . import indexing as _ix
from . import kernels, windows

__all__ = ["OPS", "NAMESPACE", "FLOAT_DTYPE"]

# The generated code's name for the backend's float dtype (the lowering puts it in the namespace).
FLOAT_DTYPE = "_float_dtype"


# A weight this much wider than deep, and this large, is a vocabulary head: kernels.wide_linear's case.
WIDE_RATIO, WIDE_SIZE = 8, 1 << 22


def linear(node: Node, a: Mapping[str, str]) -> str:
    """One fused F.linear (addmm) call, with or without bias; kernels.wide_linear for vocabulary heads."""
    bias = f", {a['bias']}" if "bias" in a else ""
    shape = static_shape(node.inputs["weight"])
    out, inner = shape if shape is not None and len(shape) == 2 and None not in shape else (0, 0)
    if out >= WIDE_RATIO * inner and out * inner >= WIDE_SIZE:
        return f"_k.wide_linear({a['input']}, {a['weight']}, {a['bias'] if 'bias' in a else 'None'})"
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


def _rank(node: Node) -> int | None:
    """The input's rank when known at compile time."""
    shape = static_shape(node.inputs["input"])
    return None if shape is None else len(shape)


def conv(node: Node, a: Mapping[str, str]) -> str:
    """F.conv{n}d called directly (n = len(stride) spatial axes); windows.conv for other n."""
    n = len(node.attrs["stride"])
    at = ", ".join(repr(node.attrs[k]) for k in CONV)
    fn = f"F.conv{n}d" if n in (1, 2, 3) else "_w.conv"
    return f"{fn}({a['input']}, {a['weight']}, {a.get('bias', 'None')}, {at})"


def pool(kind: str, attrs: tuple[str, ...]) -> OpImpl:
    """F.{kind}{n}d called directly where torch takes the input as it is, else windows.{kind} (other ranks, n > 3)."""

    def emit(node: Node, a: Mapping[str, str]) -> str:
        n = len(node.attrs["kernel_size"])
        used = attrs[:-1] if kind == "avg_pool" and n == 1 else attrs  # F.avg_pool1d takes no divisor_override
        direct = n in (1, 2, 3) and _rank(node) in (n + 1, n + 2)
        if direct and all(k in used or node.attrs[k] is None for k in attrs):
            return f"F.{kind}{n}d({a['input']}, {', '.join(repr(node.attrs[k]) for k in used)})"
        return f"_w.{kind}({a['input']}, {', '.join(repr(node.attrs[k]) for k in attrs)})"

    return emit


def sum_like(node: Node, a: Mapping[str, str]) -> str:
    """Nothing when the shapes are equal at compile time; else Tensor.sum_to_size."""
    g, like = static_shape(node.inputs["input"]), static_shape(node.inputs["like"])
    if g is not None and g == like and None not in g:
        return a["input"]
    return f"{a['input']}.sum_to_size({a['like']}.shape)"


def as_float(op: str) -> OpImpl:
    """A comparison whose boolean result becomes 1.0/0.0 in the backend's float dtype."""
    return lambda node, a: f"({a['left']} {op} {a['right']}).to({FLOAT_DTYPE})"


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


CONV = ("stride", "padding", "dilation", "groups")
MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

OPS: dict[str, OpImpl] = {
    "scalar": CONSTANT,
    "constant": CONSTANT,
    "linear": linear,
    "relu": "torch.relu({input})",
    "sigmoid": "torch.sigmoid({input})",
    "tanh": "torch.tanh({input})",
    "exp": "torch.exp({input})",
    "log": "torch.log({input})",
    "sqrt": "torch.sqrt({input})",
    "abs": "torch.abs({input})",
    "sign": "torch.sign({input})",
    "erf": "torch.erf({input})",
    "sin": "torch.sin({input})",
    "cos": "torch.cos({input})",
    "silu": "F.silu({input})",
    "neg": "torch.neg({input})",
    "square": "torch.square({input})",
    "add": "{left} + {right}",
    "sub": "{left} - {right}",
    "mul": "{left} * {right}",
    "div": "{left} / {right}",
    "pow": "torch.pow({left}, {right})",
    "maximum": "torch.maximum({left}, {right})",
    "minimum": "torch.minimum({left}, {right})",
    "greater": as_float(">"),
    "equal": as_float("=="),
    "where": "torch.where({condition} != 0, {left}, {right})",
    "matmul": "torch.matmul({left}, {right})",
    "sum": reduction("torch.sum"),
    "mean": reduction("torch.mean"),
    "max": reduction("torch.amax"),
    "expand_reduced": keyword_call("_k.expand_reduced", ("input", "like"), ("axis", "keepdim", "scale")),
    "sum_like": sum_like,
    "expand_like": "torch.broadcast_to({input}, {like}.shape)",
    "reshape_like": "torch.reshape({input}, {like}.shape)",
    "transpose": transpose,
    "swapaxes": "torch.swapaxes({input}, {axis0}, {axis1})",
    "reshape": "torch.reshape({input}, {shape})",
    "flatten": "torch.flatten({input}, {start_dim}, {end_dim})",
    "identity": "{input}",
    "conv": conv,
    "max_pool": pool("max_pool", MAX_POOL),
    "avg_pool": pool("avg_pool", AVG_POOL),
    "batch_norm": batch_norm,
    "batch_norm_inference": batch_norm_inference,
    "layer_norm": layer_norm,
    "group_norm": lambda n, a: (
        f"F.group_norm({a['input']}, {n.attrs['num_groups']!r}, {a.get('weight', 'None')}, "
        f"{a.get('bias', 'None')}, {n.attrs['eps']!r})"
    ),
    "slice": _ix.emit_slice,
    "slice_grad": _ix.emit_slice_grad,
    "concat": "torch.cat(({left}, {right}), {axis})",
    "gather": "torch.gather({input}, {axis}, {index})",
    "gather_grad": "torch.zeros_like({like}).scatter_add({axis}, {index}, {input})",
    "cumsum": "torch.cumsum({input}, {axis})",
    "tril": "torch.tril({input}, {diagonal})",
    "triu": "torch.triu({input}, {diagonal})",
    "embedding": "F.embedding({input}, {weight})",
    "one_hot": f"_k.one_hot({{input}}, {{num_classes}}, {FLOAT_DTYPE})",
    "gelu": "F.gelu({input}, approximate={approximate})",
    "leaky_relu": "F.leaky_relu({input}, {negative_slope})",
    "softmax": "torch.softmax({input}, {axis})",
    "log_softmax": "torch.log_softmax({input}, {axis})",
    "dropout_mask": "_k.dropout_mask({like}, {p}, _generator)",
    "mse_loss": "F.mse_loss({input}, {target}, reduction={reduction})",
    "cross_entropy": cross_entropy,
}


NAMESPACE: dict[str, Any] = {"torch": torch, "F": F, "_k": kernels, "_w": windows, "_ix": _ix}

# The sequence primitives (arange, attention) live in their own module.
from . import attention as _attention  # noqa: E402

OPS.update(_attention.OPS)
NAMESPACE.update(_attention.NAMESPACE)
