"""Reverse-mode rules: for each primitive and input key, the input cotangent from `{g}`.

Templates may use the node's inputs, `{output}`, `{g}` and the attributes; functions
receive the node to specialise on static shapes. Semantics follow torch autograd
(ties in maximum/minimum split the gradient; max reductions share it evenly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril.backend import OpImpl
from mithril.codegen import keyword_call, static_shape
from mithril.graph import Node
from mithril.models.rules import normalize_axes

from . import kernels
from .ops import POOL_ATTRS

__all__ = ["VJPS", "NAMESPACE"]


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `g` down to `shape`, undoing NumPy broadcasting."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def _same_shape(node: Node, key: str) -> bool:
    a, b = static_shape(node.inputs[key]), static_shape(node.outputs["output"])
    return a is not None and a == b and None not in a


def _unb(node: Node, key: str, expr: str, a: Mapping[str, str]) -> str:
    return expr if _same_shape(node, key) else f"_unbroadcast({expr}, {a[key]}.shape)"


def matmul_left(g: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    if right.ndim == 1:
        grad = np.multiply.outer(g, right) if left.ndim > 1 else g * right
    elif left.ndim == 1:
        grad = (np.expand_dims(g, -2) @ np.swapaxes(right, -1, -2))[..., 0, :]
    else:
        grad = g @ np.swapaxes(right, -1, -2)
    return unbroadcast(grad, left.shape)


def matmul_right(g: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    if right.ndim == 1:
        lead = left.reshape(-1, left.shape[-1]) if left.ndim > 1 else left[None]
        return lead.T @ g.reshape(-1)
    if left.ndim == 1:
        grad = np.multiply.outer(left, g) if g.ndim == 1 else left[:, None] * np.expand_dims(g, -2)
    else:
        grad = np.swapaxes(left, -1, -2) @ g
    return unbroadcast(grad, right.shape)


def reduce_grad(g: np.ndarray, x: np.ndarray, axis: Any, keepdim: bool, scale: bool) -> np.ndarray:
    axes = normalize_axes(axis, x.ndim)
    if not keepdim:
        g = np.expand_dims(g, axes)
    out = np.broadcast_to(g, x.shape)
    if scale:
        count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return out / count
    return out.copy()


def max_grad(g: np.ndarray, x: np.ndarray, out: np.ndarray, axis: Any, keepdim: bool) -> np.ndarray:
    axes = normalize_axes(axis, x.ndim)
    if not keepdim:
        g, out = np.expand_dims(g, axes), np.expand_dims(out, axes)
    mask = x == out
    return mask * (g / mask.sum(axis=axes, keepdims=True, dtype=g.dtype))


def tie_grad(g: np.ndarray, mine: np.ndarray, other: np.ndarray, wins: Any) -> np.ndarray:
    """maximum/minimum: the winner gets g, a tie gives each side g/2 (torch's rule)."""
    grad = np.where(mine == other, g / 2, np.where(wins(mine, other), g, 0))
    return unbroadcast(grad.astype(g.dtype, copy=False), mine.shape)


CONV_ATTRS = ("stride", "padding", "dilation", "groups")


def _linear_weight(node: Node, a: Mapping[str, str]) -> str:
    shape = static_shape(node.inputs["input"])
    if shape is not None and len(shape) == 2:
        return f"{a['g']}.T @ {a['input']}"
    g, x = a["g"], a["input"]
    return f"{g}.reshape(-1, {g}.shape[-1]).T @ {x}.reshape(-1, {x}.shape[-1])"


def _linear_bias(node: Node, a: Mapping[str, str]) -> str:
    shape = static_shape(node.inputs["input"])
    if shape is not None and len(shape) == 2:
        return f"{a['g']}.sum(0)"
    return f"{a['g']}.reshape(-1, {a['g']}.shape[-1]).sum(0)"


def _binary(left: str, right: str) -> dict[str, OpImpl]:
    return {
        "left": lambda n, a: _unb(n, "left", left.format(**a), a),
        "right": lambda n, a: _unb(n, "right", right.format(**a), a),
    }


def _transpose(node: Node, a: Mapping[str, str]) -> str:
    axes = node.attrs["axes"]
    if axes is None:
        return f"np.transpose({a['g']})"
    rank = len(axes)
    inverse = tuple(np.argsort([ax % rank for ax in axes]).tolist())
    return f"np.transpose({a['g']}, {inverse})"


def _reduce(scale: bool) -> OpImpl:
    return lambda n, a: f"_reduce_grad({a['g']}, {a['input']}, {n.attrs['axis']!r}, {n.attrs['keepdim']!r}, {scale})"


VJPS: dict[str, dict[str, OpImpl]] = {
    "linear": {"input": "{g} @ {weight}", "weight": _linear_weight, "bias": _linear_bias},
    "relu": {"input": "{g} * ({output} > 0)"},
    "sigmoid": {"input": "{g} * {output} * (1 - {output})"},
    "tanh": {"input": "{g} * (1 - {output} * {output})"},
    "exp": {"input": "{g} * {output}"},
    "log": {"input": "{g} / {input}"},
    "sqrt": {"input": "{g} / (2 * {output})"},
    "abs": {"input": "{g} * np.sign({input})"},
    "neg": {"input": "-{g}"},
    "square": {"input": "{g} * 2 * {input}"},
    "add": _binary("{g}", "{g}"),
    "sub": _binary("{g}", "-{g}"),
    "mul": _binary("{g} * {right}", "{g} * {left}"),
    "div": _binary("{g} / {right}", "-{g} * {output} / {right}"),
    "pow": _binary(
        "np.where({right} == 0, 0, {g} * {right} * {left} ** ({right} - 1))",
        "np.where(({left} == 0) & ({right} >= 0), 0, {g} * {output} * np.log(np.where({left} == 0, 1, {left})))",
    ),
    "maximum": {
        "left": "_tie_grad({g}, {left}, {right}, np.greater)",
        "right": "_tie_grad({g}, {right}, {left}, np.greater)",
    },
    "minimum": {
        "left": "_tie_grad({g}, {left}, {right}, np.less)",
        "right": "_tie_grad({g}, {right}, {left}, np.less)",
    },
    "matmul": {"left": "_matmul_left({g}, {left}, {right})", "right": "_matmul_right({g}, {left}, {right})"},
    "sum": {"input": _reduce(False)},
    "mean": {"input": _reduce(True)},
    "max": {"input": "_max_grad({g}, {input}, {output}, {axis}, {keepdim})"},
    "transpose": {"input": _transpose},
    "reshape": {"input": "np.reshape({g}, np.shape({input}))"},
    "flatten": {"input": "np.reshape({g}, np.shape({input}))"},
    "identity": {"input": "{g}"},
    "conv2d": {
        "input": keyword_call("_k.conv2d_grad_input", ("g", "input", "weight"), CONV_ATTRS),
        "weight": keyword_call("_k.conv2d_grad_weight", ("g", "input", "weight"), CONV_ATTRS),
        "bias": "{g}.sum(axis=(0, 2, 3))",
    },
    "max_pool2d": {"input": keyword_call("_k.max_pool2d_grad", ("g", "input"), POOL_ATTRS)},
    "avg_pool2d": {
        "input": keyword_call(
            "_k.avg_pool2d_grad", ("g", "input"), (*POOL_ATTRS, "count_include_pad", "divisor_override")
        )
    },
    "batch_norm": {
        key: lambda n, a, key=key: (
            f"_k.batch_norm_grad({a['g']}, {a['input']}, {a.get('weight', 'None')}, {n.attrs['eps']!r}, {key!r})"
        )
        for key in ("input", "weight", "bias")
    },
    "layer_norm": {
        key: lambda n, a, key=key: (
            f"_k.layer_norm_grad({a['g']}, {a['input']}, {a.get('weight', 'None')}, "
            f"{n.attrs['normalized_shape']!r}, {n.attrs['eps']!r}, {key!r})"
        )
        for key in ("input", "weight", "bias")
    },
    "embedding": {"weight": "_k.embedding_grad({g}, {input}, {weight})"},
    "gelu": {"input": "_k.gelu_grad({g}, {input}, {approximate})"},
    "leaky_relu": {"input": "np.where({input} > 0, {g}, {g} * {negative_slope})"},
    "softmax": {"input": "{output} * ({g} - np.sum({g} * {output}, axis={axis}, keepdims=True))"},
    "log_softmax": {"input": "{g} - np.exp({output}) * np.sum({g}, axis={axis}, keepdims=True)"},
    "dropout": {"input": "{g} * {mask}"},
    "mse_loss": {
        "input": "_k.mse_loss_grad({g}, {input}, {target}, {reduction}, 1.0)",
        "target": "_k.mse_loss_grad({g}, {input}, {target}, {reduction}, -1.0)",
    },
    "cross_entropy": {
        "input": keyword_call(
            "_k.cross_entropy_grad",
            ("g", "input", "target"),
            ("weight", "ignore_index", "reduction", "label_smoothing"),
        )
    },
}

NAMESPACE: dict[str, Any] = {
    "_unbroadcast": unbroadcast,
    "_matmul_left": matmul_left,
    "_matmul_right": matmul_right,
    "_reduce_grad": reduce_grad,
    "_max_grad": max_grad,
    "_tie_grad": tie_grad,
    "_k": kernels,
}
