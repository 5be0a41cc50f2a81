"""N-d convolution and pooling in jax (lax.conv_general_dilated, lax.reduce_window), following torch.

n, the number of spatial axes, is len(stride) (len(kernel_size) for pools). The attributes
are static Python tuples, so the geometry (padding, divisors) runs once per trace. Max
pooling has a custom VJP that routes each window's gradient where torch does: its first
maximum, its last NaN when it holds one, and its first cell inside the input when all of it
is -inf (`lax.reduce_window`'s own rule may pick another tied element).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mithril.models.rules import window_out_size

__all__ = ["conv", "max_pool", "avg_pool"]

Ints = tuple[int, ...]
Padding = list[tuple[int, int]]


# -- convolution ------------------------------------------------------------------------
def conv(
    input: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> jax.Array:
    """torch conv{n}d of [N, C, *S] input with [O, C/groups, *K] weight, at the compile option `precision`.

    Its precision comes from the `jax.default_matmul_precision` the compiled model traces under.
    """
    n = len(stride)
    spec = tuple(range(n + 2))  # [N, C, *S], [O, I, *K] and [N, O, *S] in their natural order
    y = lax.conv_general_dilated(
        input,
        weight,
        window_strides=tuple(stride),
        padding=[(p, p) for p in padding],
        rhs_dilation=tuple(dilation),
        dimension_numbers=lax.ConvDimensionNumbers(spec, spec, spec),
        feature_group_count=groups,
    )
    return y if bias is None else y + bias.reshape(-1, *(1,) * n)


# -- pooling geometry -------------------------------------------------------------------
def _geometry(
    spatial: Ints, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil: bool
) -> tuple[Ints, Padding]:
    """(output size, per-axis (low, high) padding): the high side grows so every ceil_mode window fits."""
    out, pads = [], []
    for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation):
        o = window_out_size(size, k, s, p, d, ceil)
        need = (o - 1) * s + d * (k - 1) + 1 - (size + 2 * p)
        out.append(o)
        pads.append((p, p + max(need, 0)))
    return tuple(out), pads


def _full(rank: int, values: Ints) -> Ints:
    """A reduce_window dimension tuple: 1 on the leading axes, `values` on the last len(values)."""
    return (1,) * (rank - len(values)) + tuple(values)


def _interleave(a: Ints, b: Ints) -> Ints:
    """(a1, b1, a2, b2, ...): the shape of a tiled axis split into (tile index, offset in the tile)."""
    return tuple(itertools.chain.from_iterable(zip(a, b)))


def _tiles(spatial: Ints, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints) -> bool:
    """Whether windows tile the input exactly (kernel == stride, no padding or dilation)."""
    if tuple(stride) != tuple(kernel) or any(padding) or any(d != 1 for d in dilation):
        return False
    return not any(size % k for size, k in zip(spatial, kernel))


# -- max pooling ------------------------------------------------------------------------
def _max_pool(x: jax.Array, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil: bool) -> jax.Array:
    """Window maxima over the last n axes; padding counts as -inf."""
    n = len(kernel)
    _, pads = _geometry(x.shape[-n:], kernel, stride, padding, dilation, ceil)
    return lax.reduce_window(
        x,
        np.array(-np.inf, x.dtype),
        lax.max,
        _full(x.ndim, kernel),
        _full(x.ndim, stride),
        [(0, 0)] * (x.ndim - n) + pads,
        window_dilation=_full(x.ndim, dilation),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def max_pool(
    input: jax.Array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
) -> jax.Array:
    """torch max_pool{n}d over the last n axes of any rank; the gradient goes to each window's first maximum."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool_fwd(
    input: jax.Array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Forward pass keeping the input and the maxima for the backward pass."""
    y = _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode)
    return y, (input, y)


def _max_pool_bwd(
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    ceil_mode: bool,
    residuals: tuple[jax.Array, jax.Array],
    g: jax.Array,
) -> tuple[jax.Array]:
    """Route each window's cotangent to the element torch picks (see the module docstring)."""
    x, y = residuals
    if _tiles(x.shape[-len(kernel_size) :], kernel_size, stride, padding, dilation):
        return (_route_tiles(g, x, y, kernel_size),)
    return (_route_windows(g, x, y, kernel_size, stride, padding, dilation, ceil_mode),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _route_tiles(g: jax.Array, x: jax.Array, y: jax.Array, kernel: Ints) -> jax.Array:
    """Max-pool gradient for non-overlapping tiles, as elementwise work on a [..., o1, k1, ..., on, kn] view."""
    n = len(kernel)
    lead, out = x.shape[:-n], y.shape[-n:]
    area = math.prod(kernel)
    tiles = x.reshape(*lead, *_interleave(out, kernel))
    per_tile = (*lead, *_interleave(out, (1,) * n))
    order = np.arange(area, dtype=np.int32).reshape(_interleave((1,) * n, kernel))  # row-major offset
    axes = tuple(range(1 - 2 * n, 0, 2))
    first = jnp.min(jnp.where(tiles == y.reshape(per_tile), order, area), axis=axes, keepdims=True)
    last_nan = jnp.max(jnp.where(jnp.isnan(tiles), order, -1), axis=axes, keepdims=True)
    chosen = jnp.where(last_nan >= 0, last_nan, first)
    grad = jnp.where(order == chosen, g.reshape(per_tile), jnp.zeros((), g.dtype))
    return grad.reshape(x.shape)


def _route_windows(
    g: jax.Array,
    x: jax.Array,
    y: jax.Array,
    kernel: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    ceil: bool,
) -> jax.Array:
    """Max-pool gradient for overlapping or padded windows: strided slices, one per kernel offset."""
    n = len(kernel)
    lead = x.ndim - n
    out, pads = _geometry(x.shape[-n:], kernel, stride, padding, dilation, ceil)
    xp = lax.pad(x, np.array(-np.inf, x.dtype), [(0, 0, 0)] * lead + [(lo, hi, 0) for lo, hi in pads])
    inside = np.zeros(xp.shape[lead:], np.bool_)
    inside[tuple(slice(lo, lo + size) for (lo, _), size in zip(pads, x.shape[lead:]))] = True
    area = math.prod(kernel)
    starts = [tuple(t * d for t, d in zip(offset, dilation)) for offset in itertools.product(*map(range, kernel))]
    first = jnp.full(y.shape, area, jnp.int32)
    last_nan = jnp.full(y.shape, -1, jnp.int32)
    for t, start in enumerate(starts):
        limit = tuple(a + s * (o - 1) + 1 for a, s, o in zip(start, stride, out))
        window = lax.slice(xp, (0,) * lead + start, (*xp.shape[:lead], *limit), _full(x.ndim, stride))
        hit = (first == area) & (window == y)
        cells = inside[tuple(slice(a, b, s) for a, b, s in zip(start, limit, stride))]
        if not cells.all():
            hit = hit & cells  # an all -inf window's first hit must be a cell of the input, as torch's
        first = jnp.where(hit, t, first)
        last_nan = jnp.where(jnp.isnan(window), t, last_nan)
    chosen = jnp.where(last_nan >= 0, last_nan, first)
    zero = jnp.zeros((), g.dtype)
    grad = jnp.zeros(xp.shape, g.dtype)
    for t, start in enumerate(starts):
        spread = [(0, 0, 0)] * lead + [
            (a, size - a - s * (o - 1) - 1, s - 1) for a, size, s, o in zip(start, xp.shape[lead:], stride, out)
        ]
        grad = grad + lax.pad(jnp.where(chosen == t, g, zero), zero, spread)
    unpadded = (Ellipsis, *(slice(lo, lo + size) for (lo, _), size in zip(pads, x.shape[lead:])))
    return grad[unpadded]


# -- average pooling --------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _avg_divisor(
    spatial: Ints,
    kernel: Ints,
    stride: Ints,
    padding: Ints,
    ceil: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> float | np.ndarray:
    """torch's divisor per output cell: the override, or the window's cells inside the (padded) input."""
    if divisor_override is not None:
        return float(divisor_override)
    n = len(kernel)
    out, pads = _geometry(spatial, kernel, stride, padding, (1,) * n, ceil)
    padded = tuple(size + 2 * p for size, p in zip(spatial, padding))
    counted = np.zeros(padded)
    if count_include_pad:
        counted[:] = 1.0  # padding counts, cells past the padded input (ceil_mode) do not
    else:
        counted[tuple(slice(p, p + size) for p, size in zip(padding, spatial))] = 1.0
    counted = np.pad(counted, [(0, hi - lo) for lo, hi in pads])
    div = np.zeros(out)
    for offset in itertools.product(*map(range, kernel)):
        div += counted[tuple(slice(t, t + s * (o - 1) + 1, s) for t, s, o in zip(offset, stride, out))]
    div.setflags(write=False)
    return div


def avg_pool(
    input: jax.Array,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> jax.Array:
    """torch avg_pool{n}d over the last n axes of any rank (jax differentiates the window sum)."""
    n = len(kernel_size)
    spatial = tuple(input.shape[-n:])
    _, pads = _geometry(spatial, kernel_size, stride, padding, (1,) * n, ceil_mode)
    total = lax.reduce_window(
        input,
        np.array(0, input.dtype),
        lax.add,
        _full(input.ndim, kernel_size),
        _full(input.ndim, stride),
        [(0, 0)] * (input.ndim - n) + pads,
    )
    div = _avg_divisor(
        spatial, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode, count_include_pad, divisor_override
    )
    return total / jnp.asarray(div, input.dtype)
