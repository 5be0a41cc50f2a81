"""N-d convolution and pooling in NumPy, with their gradients, following torch's semantics.

n, the number of spatial axes, is len(stride) (len(kernel_size) for pools), so 1-, 2- and 3-d
windows share one implementation. Windows are strided views of the padded input and the
products go to BLAS; loops run over kernel offsets (prod(kernel) iterations), never over
output positions.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mithril.models.rules import window_out_size

__all__ = [
    "conv",
    "conv_input_grad",
    "conv_weight_grad",
    "max_pool",
    "max_pool_grad",
    "avg_pool",
    "avg_pool_grad",
]

Ints = tuple[int, ...]

_OUT_LETTERS = "HIJKLM"  # einsum subscripts for output positions
_KERNEL_LETTERS = "PQRSTU"  # and for kernel offsets


# -- geometry ---------------------------------------------------------------------------
def _pad(x: np.ndarray, padding: Ints, value: float = 0.0) -> np.ndarray:
    """`x` with `padding` cells of `value` on both sides of each of its last len(padding) axes."""
    if not any(padding):
        return x
    width = [(0, 0)] * (x.ndim - len(padding)) + [(p, p) for p in padding]
    return np.pad(x, width, constant_values=value)


def _windows(xp: np.ndarray, out: Ints, kernel: Ints, stride: Ints, dilation: Ints) -> np.ndarray:
    """Read-only view [..., *out, *kernel] of the windows of the padded input `xp`."""
    n = len(out)
    steps = xp.strides[-n:]
    shape = (*xp.shape[:-n], *out, *kernel)
    strides = (
        *xp.strides[:-n],
        *(step * s for step, s in zip(steps, stride)),
        *(step * d for step, d in zip(steps, dilation)),
    )
    return as_strided(xp, shape, strides, writeable=False)


def _reach(out: Ints, kernel: Ints, stride: Ints, dilation: Ints) -> Ints:
    """Per-axis extent that `out` windows span, from the first window's start to the last one's end."""
    return tuple((o - 1) * s + d * (k - 1) + 1 for o, k, s, d in zip(out, kernel, stride, dilation))


def _extra_pad(xp: np.ndarray, out: Ints, kernel: Ints, stride: Ints, dilation: Ints, value: float) -> np.ndarray:
    """Pad the high end of the last n axes so every window of a ceil_mode output is in bounds."""
    n = len(out)
    need = [r - size for r, size in zip(_reach(out, kernel, stride, dilation), xp.shape[-n:])]
    if all(e <= 0 for e in need):
        return xp
    width = [(0, 0)] * (xp.ndim - n) + [(0, max(e, 0)) for e in need]
    return np.pad(xp, width, constant_values=value)


def _out_shape(spatial: Ints, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil: bool) -> Ints:
    """Output size on each spatial axis (torch's rule, ceil_mode included)."""
    return tuple(
        window_out_size(size, k, s, p, d, ceil) for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation)
    )


def _scatter(
    grad_windows: np.ndarray,
    padded_shape: Ints,
    out: Ints,
    kernel: Ints,
    stride: Ints,
    dilation: Ints,
    padding: Ints,
    shape: Ints,
) -> np.ndarray:
    """Sum window gradients [..., *out, *kernel] back onto an input of shape `shape` (padded: `padded_shape`)."""
    n = len(out)
    dxp = np.zeros(padded_shape, grad_windows.dtype)
    for offset in itertools.product(*map(range, kernel)):
        target: Any = (
            Ellipsis,
            *(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(offset, dilation, stride, out)),
        )
        source: Any = (Ellipsis, *offset)
        dxp[target] += grad_windows[source]
    inside: Any = (Ellipsis, *(slice(p, p + size) for p, size in zip(padding, shape[-n:])))
    return dxp[inside]


# -- convolution ------------------------------------------------------------------------
def conv(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> np.ndarray:
    """torch conv{n}d of [N, C, *S] input with [O, C/groups, *K] weight, as one BLAS product over window views."""
    n = len(stride)
    kernel = weight.shape[2:]
    out = _out_shape(input.shape[2:], kernel, stride, padding, dilation, False)
    win = _windows(_pad(input, padding), out, kernel, stride, dilation)  # [N, C, *out, *K]
    batch, channels = input.shape[:2]
    if groups == 1:
        k_axes = range(n + 2, 2 * n + 2)
        y = np.tensordot(win, weight, axes=([1, *k_axes], [1, *range(2, n + 2)]))  # [N, *out, O]
    else:
        o, k = _OUT_LETTERS[:n], _KERNEL_LETTERS[:n]
        wing = win.reshape(batch, groups, channels // groups, *win.shape[2:])
        wg = weight.reshape(groups, -1, *weight.shape[1:])
        y = np.einsum(f"zgc{o}{k},gac{k}->z{o}ga", wing, wg, optimize=True).reshape(batch, *out, -1)
    if bias is not None:
        y += bias
    return y.transpose(0, n + 1, *range(1, n + 1))


def conv_input_grad(
    g: np.ndarray,
    weight: np.ndarray,
    like: np.ndarray,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> np.ndarray:
    """Gradient of `conv` with respect to its input (shape of `like`): weight products scattered per kernel offset."""
    n = len(stride)
    kernel = weight.shape[2:]
    out = g.shape[2:]
    batch = g.shape[0]
    if groups == 1:
        gw = np.tensordot(g, weight, axes=([1], [0]))  # [N, *out, C, *K]
    else:
        o, k = _OUT_LETTERS[:n], _KERNEL_LETTERS[:n]
        gg = g.reshape(batch, groups, -1, *out)
        wg = weight.reshape(groups, -1, *weight.shape[1:])
        gw = np.einsum(f"zga{o},gac{k}->z{o}gc{k}", gg, wg, optimize=True).reshape(batch, *out, -1, *kernel)
    gw = gw.transpose(0, n + 1, *range(1, n + 1), *range(n + 2, 2 * n + 2))  # [N, C, *out, *K]
    padded = (*like.shape[:2], *(size + 2 * p for size, p in zip(like.shape[2:], padding)))
    return _scatter(gw, padded, out, kernel, stride, dilation, padding, like.shape)


def conv_weight_grad(
    g: np.ndarray,
    data: np.ndarray,
    like: np.ndarray,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> np.ndarray:
    """Gradient of `conv` with respect to its weight (shape of `like`): one BLAS product of `g` with input windows."""
    n = len(stride)
    out = g.shape[2:]
    win = _windows(_pad(data, padding), out, like.shape[2:], stride, dilation)  # [N, C, *out, *K]
    spatial = range(2, n + 2)
    if groups == 1:
        return np.tensordot(g, win, axes=([0, *spatial], [0, *spatial]))
    o, k = _OUT_LETTERS[:n], _KERNEL_LETTERS[:n]
    batch, channels = data.shape[:2]
    gg = g.reshape(batch, groups, -1, *out)
    wing = win.reshape(batch, groups, channels // groups, *win.shape[2:])
    return np.einsum(f"zga{o},zgc{o}{k}->gac{k}", gg, wing, optimize=True).reshape(like.shape)


# -- max pooling ------------------------------------------------------------------------
def _tiles(x: np.ndarray, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints) -> np.ndarray | None:
    """[..., o1, k1, ..., on, kn] view when windows tile the input exactly (the common kernel == stride case)."""
    n = len(kernel)
    spatial = x.shape[-n:]
    if tuple(stride) != tuple(kernel) or any(padding) or any(d != 1 for d in dilation):
        return None
    if any(size % k for size, k in zip(spatial, kernel)):
        return None
    return x.reshape(*x.shape[:-n], *itertools.chain.from_iterable((size // k, k) for size, k in zip(spatial, kernel)))


def _first_inside(out: Ints, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints) -> np.ndarray:
    """Row-major kernel offset of each window's first element inside the (unpadded) input, shape `out`."""
    per_axis = [
        np.clip(-((np.arange(o) * s - p) // d), 0, k - 1)
        for o, k, s, p, d in zip(out, kernel, stride, padding, dilation)
    ]
    return np.ravel_multi_index(np.meshgrid(*per_axis, indexing="ij"), kernel)


def _choice(flat: np.ndarray, x: np.ndarray, inside: tuple[Ints, Ints, Ints, Ints, Ints] | None) -> np.ndarray:
    """Offset in each flattened window of `x` that torch routes the gradient to.

    The first maximum; in a window holding NaN, its last NaN; in an all -inf window, its first
    element inside the input (`inside` is the pool geometry, None when no window reaches padding).
    """
    choice = flat.argmax(axis=-1)
    if np.isfinite(x).all():
        return choice
    picked = np.take_along_axis(flat, choice[..., None], axis=-1)[..., 0]
    nan = np.isnan(picked)  # argmax stops at a window's first NaN
    if nan.any():
        last = flat.shape[-1] - 1 - np.isnan(flat[..., ::-1]).argmax(axis=-1)
        choice = np.where(nan, last, choice)
    if inside is not None:
        empty = np.isneginf(picked)
        if empty.any():
            choice = np.where(empty, _first_inside(*inside), choice)
    return choice


def max_pool(
    input: np.ndarray, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
) -> np.ndarray:
    """torch max_pool{n}d over the last n axes of an input of any rank; padding counts as -inf."""
    n = len(kernel_size)
    tiles = _tiles(input, kernel_size, stride, padding, dilation)
    if tiles is not None:
        return tiles.max(axis=tuple(range(1 - 2 * n, 0, 2)))
    out = _out_shape(input.shape[-n:], kernel_size, stride, padding, dilation, ceil_mode)
    xp = _extra_pad(_pad(input, padding, -np.inf), out, kernel_size, stride, dilation, -np.inf)
    return _windows(xp, out, kernel_size, stride, dilation).max(axis=tuple(range(-n, 0)))


def max_pool_grad(
    g: np.ndarray, like: np.ndarray, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
) -> np.ndarray:
    """Gradient of `max_pool` with respect to its input `like`: each window's goes to its first maximum, as torch."""
    n = len(kernel_size)
    area = math.prod(kernel_size)
    tiles = _tiles(like, kernel_size, stride, padding, dilation)
    if tiles is not None:
        lead = like.ndim - n
        order = (*range(lead), *range(lead, lead + 2 * n, 2), *range(lead + 1, lead + 2 * n, 2))
        flat = tiles.transpose(order).reshape(*g.shape, area)  # [..., *out, prod(kernel)]
        onehot = _choice(flat, like, None)[..., None] == np.arange(area)
        grad = (onehot * g[..., None]).reshape(*g.shape, *kernel_size).transpose(np.argsort(order))
        return grad.reshape(like.shape)
    out = g.shape[-n:]
    xp = _extra_pad(_pad(like, padding, -np.inf), out, kernel_size, stride, dilation, -np.inf)
    win = _windows(xp, out, kernel_size, stride, dilation)
    inside = (out, kernel_size, stride, padding, dilation) if any(padding) else None
    choice = _choice(win.reshape(*win.shape[:-n], area), like, inside)
    onehot = (choice[..., None] == np.arange(area)).reshape(*choice.shape, *kernel_size)
    spread = onehot * g.reshape(*g.shape, *(1,) * n)
    return _scatter(spread, xp.shape, out, kernel_size, stride, dilation, padding, like.shape)


# -- average pooling --------------------------------------------------------------------
def _avg_divisor(
    spatial: Ints,
    dtype: Any,
    out: Ints,
    kernel: Ints,
    stride: Ints,
    padding: Ints,
    count_include_pad: bool,
    divisor_override: int | None,
) -> float | np.ndarray:
    """torch's divisor per output cell: the override, or the window's cells inside the (padded) input."""
    if divisor_override is not None:
        return float(divisor_override)
    if count_include_pad:
        # Padding counts, but cells past the padded input (ceil_mode) do not.
        counted = np.ones(tuple(size + 2 * p for size, p in zip(spatial, padding)), dtype)
    else:
        counted = _pad(np.ones(spatial, dtype), padding)
    unit = (1,) * len(out)
    counted = _extra_pad(counted, out, kernel, stride, unit, 0.0)
    return _windows(counted, out, kernel, stride, unit).sum(axis=tuple(range(-len(out), 0)))


def avg_pool(
    input: np.ndarray,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    """torch avg_pool{n}d over the last n axes of an input of any rank."""
    n = len(kernel_size)
    unit = (1,) * n
    spatial = input.shape[-n:]
    out = _out_shape(spatial, kernel_size, stride, padding, unit, ceil_mode)
    xp = _extra_pad(_pad(input, padding), out, kernel_size, stride, unit, 0.0)
    total = _windows(xp, out, kernel_size, stride, unit).sum(axis=tuple(range(-n, 0)))
    div = _avg_divisor(spatial, input.dtype, out, kernel_size, stride, padding, count_include_pad, divisor_override)
    return (total / div).astype(input.dtype, copy=False)


def avg_pool_grad(
    g: np.ndarray,
    like: np.ndarray,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    """Gradient of `avg_pool` with respect to its input (shape of `like`): each window's share spread over it."""
    n = len(kernel_size)
    unit = (1,) * n
    spatial = like.shape[-n:]
    out = g.shape[-n:]
    div = _avg_divisor(spatial, g.dtype, out, kernel_size, stride, padding, count_include_pad, divisor_override)
    share = (g / div).astype(g.dtype, copy=False)
    padded = tuple(max(size + 2 * p, r) for size, p, r in zip(spatial, padding, _reach(out, kernel_size, stride, unit)))
    spread = np.broadcast_to(share.reshape(*share.shape, *(1,) * n), (*share.shape, *kernel_size))
    return _scatter(spread, (*like.shape[:-n], *padded), out, kernel_size, stride, unit, padding, like.shape)
