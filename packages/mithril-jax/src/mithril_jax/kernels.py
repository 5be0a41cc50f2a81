"""jnp/lax implementations of the primitives that need more than one expression.

The generated code calls these while jax traces it, so their Python (geometry, divisors)
runs once per trace. Semantics follow torch and the NumPy reference: max pooling sends a
window's gradient to its first maximum (a custom VJP; `lax.reduce_window`'s own rule may
pick another tied element), running statistics are never differentiated, and half-precision
statistics (batch and layer norm) are accumulated in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mithril.models.rules import window_out_size

__all__ = [
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_inference",
    "layer_norm",
    "dropout",
    "mse_loss",
    "cross_entropy",
]

Pair = tuple[int, int]
Padding = list[tuple[int, int]]

_CONV_DIMS = ("NCHW", "OIHW", "NCHW")
_HALF = (jnp.float16, jnp.bfloat16)


def _wide(x: jax.Array) -> jax.Array:
    """`x` in float32 when it is float16/bfloat16 (for accumulating statistics), else `x`."""
    return x.astype(jnp.float32) if x.dtype in _HALF else x


# -- convolution ------------------------------------------------------------------------
def conv2d(
    x: jax.Array, w: jax.Array, b: jax.Array | None, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> jax.Array:
    """torch.nn.functional.conv2d for [N, C, H, W] input and [O, C/groups, kh, kw] weight."""
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=[(padding[0], padding[0]), (padding[1], padding[1])],
        rhs_dilation=dilation,
        dimension_numbers=_CONV_DIMS,
        feature_group_count=groups,
    )
    return y if b is None else y + b[:, None, None]


# -- pooling geometry -------------------------------------------------------------------
def _window_padding(
    shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil: bool
) -> tuple[Pair, Padding]:
    """(output size, per-axis (low, high) padding): the bottom/right grow so every ceil_mode window fits."""
    out, pads = [], []
    for size, k, s, p, d in zip(shape[-2:], kernel, stride, padding, dilation):
        o = window_out_size(size, k, s, p, d, ceil)
        need = (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p)
        out.append(o)
        pads.append((p, p + max(need, 0)))
    lead = [(0, 0)] * (len(shape) - 2)
    return (out[0], out[1]), lead + pads


def _window(rank: int, pair: Pair) -> tuple[int, ...]:
    """A reduce_window dimension tuple that is 1 on the leading axes and `pair` on the last two."""
    return (1,) * (rank - 2) + tuple(pair)


def _tiles(x: jax.Array, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> bool:
    """Whether windows tile the input exactly (kernel == stride, no padding or dilation)."""
    h, w = x.shape[-2:]
    return stride == kernel and padding == (0, 0) and dilation == (1, 1) and not h % kernel[0] and not w % kernel[1]


# -- max pooling ------------------------------------------------------------------------
def _max_pool(x: jax.Array, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil: bool) -> jax.Array:
    """Window maxima; padding counts as -inf."""
    _, pads = _window_padding(x.shape, kernel, stride, padding, dilation, ceil)
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        _window(x.ndim, kernel),
        _window(x.ndim, stride),
        pads,
        window_dilation=_window(x.ndim, dilation),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def max_pool2d(
    x: jax.Array, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> jax.Array:
    """torch.nn.functional.max_pool2d over the last two axes; the gradient goes to each window's first maximum."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool_fwd(
    x: jax.Array, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Forward pass keeping the input and the maxima for the backward pass."""
    y = _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    return y, (x, y)


def _max_pool_bwd(
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    ceil_mode: bool,
    residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array]:
    """Route each window's cotangent to the first (row-major) element equal to its maximum."""
    x, y = residuals
    if _tiles(x, kernel_size, stride, padding, dilation):
        return (_first_max_tiles(g, x, y, kernel_size),)
    return (_first_max_windows(g, x, y, kernel_size, stride, padding, dilation, ceil_mode),)


max_pool2d.defvjp(_max_pool_fwd, _max_pool_bwd)


def _first_max_tiles(g: jax.Array, x: jax.Array, y: jax.Array, kernel: Pair) -> jax.Array:
    """Max-pool gradient for non-overlapping tiles, as elementwise work on a [..., Ho, kh, Wo, kw] view."""
    kh, kw = kernel
    *lead, h, w = x.shape
    tiles = x.reshape(*lead, h // kh, kh, w // kw, kw)
    order = (np.arange(kh)[:, None, None] * kw + np.arange(kw)).astype(np.int32)  # [kh, 1, kw], row-major
    hit = tiles == y[..., :, None, :, None]
    first = jnp.min(jnp.where(hit, order, kh * kw), axis=(-3, -1), keepdims=True)
    grad = jnp.where(order == first, g[..., :, None, :, None], jnp.zeros((), g.dtype))
    return grad.reshape(x.shape)


def _first_max_windows(
    g: jax.Array, x: jax.Array, y: jax.Array, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil: bool
) -> jax.Array:
    """Max-pool gradient for overlapping or padded windows: one strided slice per kernel offset."""
    out, pads = _window_padding(x.shape, kernel, stride, padding, dilation, ceil)
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in pads])
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(y.shape, jnp.bool_)
    grad = jnp.zeros(xp.shape, g.dtype)
    lead = x.ndim - 2
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = (0,) * lead + (i * dilation[0], j * dilation[1])
            limit = (*xp.shape[:lead], *(s + st * (o - 1) + 1 for s, st, o in zip(start[lead:], stride, out)))
            window = lax.slice(xp, start, limit, (1,) * lead + tuple(stride))
            hit = (window == y) & ~taken
            taken = taken | hit
            spread = [(0, 0, 0)] * lead + [
                (s, size - e, st - 1) for s, e, size, st in zip(start[lead:], limit[lead:], xp.shape[lead:], stride)
            ]
            grad = grad + lax.pad(jnp.where(hit, g, zero), zero, spread)
    (ph, _), (pw, _) = pads[-2:]
    return grad[..., ph : ph + x.shape[-2], pw : pw + x.shape[-1]]


# -- average pooling ----------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _avg_divisor(
    shape: tuple[int, int],
    out: Pair,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    ceil: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> float | np.ndarray:
    """torch's divisor per output cell: the window area, the cells inside the (padded) input, or the override."""
    if divisor_override is not None:
        return float(divisor_override)
    h, w = shape
    ph, pw = padding
    counted = np.zeros((h + 2 * ph, w + 2 * pw))
    if count_include_pad:
        counted[:] = 1.0  # padding counts, cells past the padded input (ceil_mode) do not
    else:
        counted[ph : ph + h, pw : pw + w] = 1.0
    _, pads = _window_padding(shape, kernel, stride, padding, (1, 1), ceil)
    counted = np.pad(counted, [(0, hi - lo) for lo, hi in pads])
    div = np.zeros(out)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            div += counted[
                i : i + stride[0] * (out[0] - 1) + 1 : stride[0], j : j + stride[1] * (out[1] - 1) + 1 : stride[1]
            ]
    return div


def avg_pool2d(
    x: jax.Array,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> jax.Array:
    """torch.nn.functional.avg_pool2d over the last two axes (dilation is always 1 for average pooling)."""
    out, pads = _window_padding(x.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    total = lax.reduce_window(x, 0.0, lax.add, _window(x.ndim, kernel_size), _window(x.ndim, stride), pads)
    div = _avg_divisor(
        tuple(x.shape[-2:]), out, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    return total / jnp.asarray(div, x.dtype)


# -- normalisation ----------------------------------------------------------------------
def batch_norm(
    x: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array | None,
    running_var: jax.Array | None,
    eps: float,
    momentum: float,
) -> Any:
    """Training-mode batch norm over (N, H, W): the output, or (output, new running mean, new running var)."""
    xw = _wide(x)
    mean = jnp.mean(xw, axis=(0, 2, 3))
    centred = xw - mean[:, None, None]
    var = jnp.mean(jnp.square(centred), axis=(0, 2, 3))
    scale = lax.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = centred * scale[:, None, None]
    if bias is not None:
        y = y + bias[:, None, None]
    y = y.astype(x.dtype)
    if running_mean is None or running_var is None:
        return y
    n = x.size // x.shape[1]
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    new_mean = ((1 - momentum) * running_mean + momentum * mean).astype(running_mean.dtype)
    new_var = ((1 - momentum) * running_var + momentum * var * (n / max(n - 1, 1))).astype(running_var.dtype)
    return y, new_mean, new_var


def batch_norm_inference(
    x: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array,
    running_var: jax.Array,
    eps: float,
) -> jax.Array:
    """Batch norm with the running statistics, folded into one scale and shift per channel."""
    scale = lax.rsqrt(_wide(running_var) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return (x * scale[:, None, None] + shift[:, None, None]).astype(x.dtype)


def layer_norm(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, normalized_shape: tuple[int, ...], eps: float
) -> jax.Array:
    """torch.nn.functional.layer_norm over the last len(normalized_shape) axes (biased variance)."""
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    xw = _wide(x)
    mean = jnp.mean(xw, axis=axes, keepdims=True)
    centred = xw - mean
    y = centred * lax.rsqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


# -- randomness -------------------------------------------------------------------------
def dropout(x: jax.Array, p: float, key: jax.Array, stream: int) -> tuple[jax.Array, jax.Array]:
    """(x * mask, mask): the mask keeps each element with probability 1 - p and is scaled by 1 / (1 - p).

    `stream` (the node's index among the model's random nodes) is folded into the per-call
    key, so two dropout layers of one model draw independent masks.
    """
    if p == 0.0:
        mask = jnp.ones(x.shape, x.dtype)
    elif p == 1.0:
        mask = jnp.zeros(x.shape, x.dtype)
    else:
        keep = jax.random.bernoulli(jax.random.fold_in(key, stream), 1.0 - p, x.shape)
        mask = jnp.where(keep, jnp.asarray(1.0 / (1.0 - p), x.dtype), jnp.zeros((), x.dtype))
    return x * mask, mask


# -- losses -----------------------------------------------------------------------------
def _reduce(loss: jax.Array, reduction: str) -> jax.Array:
    """Apply a torch loss reduction ('none', 'sum' or 'mean')."""
    if reduction == "none":
        return loss
    return jnp.sum(loss) if reduction == "sum" else jnp.mean(loss)


def mse_loss(x: jax.Array, t: jax.Array, reduction: str) -> jax.Array:
    """torch.nn.functional.mse_loss."""
    return _reduce(jnp.square(x - t), reduction)


def cross_entropy(
    x: jax.Array,
    t: jax.Array,
    weight: tuple[float, ...] | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> jax.Array:
    """torch.nn.functional.cross_entropy over logits [N, C, ...] and integer targets [N, ...]."""
    c = x.shape[1]
    logp = jax.nn.log_softmax(x, axis=1)
    valid = t != ignore_index
    safe = jnp.where(valid, t, 0)
    classes = (1, c) + (1,) * (x.ndim - 2)
    w = None if weight is None else jnp.asarray(np.asarray(weight).reshape(classes), x.dtype)
    picked = jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    wt = valid.astype(x.dtype) if w is None else jnp.take(w.reshape(c), safe) * valid
    loss = -picked * wt
    if label_smoothing:
        smooth = -jnp.sum(logp if w is None else logp * w, axis=1) * valid
        loss = (1 - label_smoothing) * loss + (label_smoothing / c) * smooth
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(wt)
    return _reduce(loss, reduction)
