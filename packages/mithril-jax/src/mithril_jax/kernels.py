"""jnp/lax implementations of the primitives that need more than one expression (windows: windows.py).

The generated code calls these while jax traces it, so their Python (axes, counts) runs
once per trace. Semantics follow torch and the NumPy reference: running statistics are
never differentiated, and half-precision statistics (batch, layer and group norm) are
accumulated in float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mithril.models.rules import normalize_axes

__all__ = [
    "batch_norm",
    "batch_norm_inference",
    "layer_norm",
    "group_norm",
    "dropout_mask",
    "sum_like",
    "expand_reduced",
    "mse_loss",
    "cross_entropy",
]

_HALF = (jnp.float16, jnp.bfloat16)


def _wide(x: jax.Array) -> jax.Array:
    """`x` in float32 when it is float16/bfloat16 (for accumulating statistics), else `x`."""
    return x.astype(jnp.float32) if x.dtype in _HALF else x


# -- normalisation ----------------------------------------------------------------------
def _per_channel(x: jax.Array, values: jax.Array) -> jax.Array:
    """Per-channel `values` [C] shaped to broadcast over [N, C, *spatial] input `x`."""
    return values.reshape(-1, *(1,) * (x.ndim - 2))


def batch_norm(
    x: jax.Array,
    weight: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array | None,
    running_var: jax.Array | None,
    eps: float,
    momentum: float,
) -> Any:
    """Training-mode batch norm over [N, C, *]: the output, or (output, new running mean, new running var)."""
    axes = (0, *range(2, x.ndim))
    xw = _wide(x)
    mean = jnp.mean(xw, axis=axes)
    centred = xw - _per_channel(x, mean)
    var = jnp.mean(jnp.square(centred), axis=axes)
    scale = lax.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = centred * _per_channel(x, scale)
    if bias is not None:
        y = y + _per_channel(x, bias)
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
    """Batch norm over [N, C, *] with the running statistics, folded into one scale and shift per channel."""
    scale = lax.rsqrt(_wide(running_var) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return (x * _per_channel(x, scale) + _per_channel(x, shift)).astype(x.dtype)


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


def group_norm(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, num_groups: int, eps: float
) -> jax.Array:
    """torch.nn.functional.group_norm over [N, C, *]: statistics per sample and group of C/num_groups channels."""
    xw = _wide(x)
    grouped = xw.reshape(x.shape[0], num_groups, -1)
    centred = grouped - jnp.mean(grouped, axis=-1, keepdims=True)
    y = (centred * lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)).reshape(x.shape)
    if weight is not None:
        y = y * _per_channel(x, weight)
    if bias is not None:
        y = y + _per_channel(x, bias)
    return y.astype(x.dtype)


# -- randomness -------------------------------------------------------------------------
def dropout_mask(like: jax.Array, p: float, key: jax.Array, stream: int) -> jax.Array:
    """A mask shaped like `like`: 0 with probability p, else 1 / (1 - p).

    `stream` (the node's index among the model's random nodes) is folded into the per-call
    key, so two dropout layers of one model draw independent masks.
    """
    if p == 0.0:
        return jnp.ones(like.shape, like.dtype)
    if p == 1.0:
        return jnp.zeros(like.shape, like.dtype)
    keep = jax.random.bernoulli(jax.random.fold_in(key, stream), 1.0 - p, like.shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - p), like.dtype), jnp.zeros((), like.dtype))


# -- broadcasting forms ------------------------------------------------------------------
def sum_like(g: jax.Array, like: jax.Array) -> jax.Array:
    """Sum `g` down to `like`'s shape, undoing broadcasting (the axes are found while tracing)."""
    shape = jnp.shape(like)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return jnp.sum(g, axis=axes).reshape(shape)


def expand_reduced(g: jax.Array, like: jax.Array, axis: Any, keepdim: bool, scale: bool) -> jax.Array:
    """Broadcast a reduction's result back over `like`; divided by the reduced count when `scale`."""
    axes = normalize_axes(axis, like.ndim)
    if not keepdim:
        g = jnp.expand_dims(g, axes)
    if scale:
        g = g / (math.prod(like.shape[a] for a in axes) or 1)
    return jnp.broadcast_to(g, like.shape)


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
    """torch.nn.functional.cross_entropy over logits [C], [N, C] or [N, C, ...]: class indices (a target
    without the class axis) or class probabilities (a target shaped like the logits)."""
    if x.ndim == 1:
        loss = cross_entropy(x[None], t[None], weight, ignore_index, reduction, label_smoothing)
        return loss.reshape(()) if reduction == "none" else loss
    c = x.shape[1]
    classes = (1, c) + (1,) * (x.ndim - 2)
    w = None if weight is None else jnp.asarray(np.asarray(weight).reshape(classes), x.dtype)
    logp = jax.nn.log_softmax(x, axis=1)
    if t.shape == x.shape:  # probabilities: torch multiplies, so a -inf log-probability times 0 is NaN there too
        if label_smoothing:
            t = t * (1 - label_smoothing) + label_smoothing / c
        terms = logp * t if w is None else logp * t * w
        return _reduce(-jnp.sum(terms, axis=1), reduction)
    valid = t != ignore_index
    safe = jnp.where(valid, t, 0)
    picked = jnp.where(valid, jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0], 0)
    wt = valid.astype(x.dtype) if w is None else jnp.take(w.reshape(c), safe) * valid
    loss = -picked * wt
    if label_smoothing:
        smooth = jnp.where(valid, -jnp.sum(logp if w is None else logp * w, axis=1), 0)
        loss = (1 - label_smoothing) * loss + (label_smoothing / c) * smooth
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(wt)
    return _reduce(loss, reduction)
