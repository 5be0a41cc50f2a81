"""NumPy kernels for the primitives that need more than one expression.

Gradients are not here: the core builds them as graphs of primitives (mithril.primitives).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mithril.models.rules import normalize_axes
from mithril.validation import indices_in_range

_erf = np.frompyfunc(math.erf, 1, 1)


def _bn_stats(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    return mean, var, inv


def _channels(v: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector [C] shaped to broadcast over axis 1 of a rank-`rank` array."""
    return v.reshape((-1,) + (1,) * (rank - 2))


def batch_norm(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    eps: float,
    momentum: float,
) -> Any:
    """Training-mode batch norm over (N, H, W); returns (output[, new_mean, new_var])."""
    mean, var, inv = _bn_stats(x, eps)
    y = (x - _channels(mean, x.ndim)) * _channels(inv, x.ndim)
    if weight is not None:
        y = y * _channels(weight, x.ndim)
    if bias is not None:
        y = y + _channels(bias, x.ndim)
    y = y.astype(x.dtype, copy=False)
    if running_mean is None or running_var is None:
        return y
    n = x.size // x.shape[1]
    unbiased = var * (n / max(n - 1, 1))
    new_mean = ((1 - momentum) * running_mean + momentum * mean).astype(running_mean.dtype, copy=False)
    new_var = ((1 - momentum) * running_var + momentum * unbiased).astype(running_var.dtype, copy=False)
    return y, new_mean, new_var


def batch_norm_inference(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
) -> np.ndarray:
    inv = 1.0 / np.sqrt(running_var + eps)
    scale = inv if weight is None else weight * inv
    shift = -running_mean * scale + (0 if bias is None else bias)
    return (x * _channels(scale, x.ndim) + _channels(shift, x.ndim)).astype(x.dtype, copy=False)


def _ln_axes(x: np.ndarray, normalized_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def layer_norm(
    x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, normalized_shape: tuple[int, ...], eps: float
) -> np.ndarray:
    axes = _ln_axes(x, normalized_shape)
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    y = (x - mean) * inv
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False)


# -- activations ------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        y = 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    else:
        y = 0.5 * x * (1 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
    return y.astype(x.dtype, copy=False)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def dropout_mask(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """0 with probability p, else 1/(1-p), shaped like x."""
    if p == 0.0:
        return np.ones_like(x)
    if p == 1.0:
        return np.zeros_like(x)
    return ((rng.random(x.shape) >= p) / (1.0 - p)).astype(x.dtype)


def dropout(x: np.ndarray, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (output, mask) with the mask already scaled by 1/(1-p)."""
    mask = dropout_mask(x, p, rng)
    return x * mask, mask


# -- losses -----------------------------------------------------------------------------
def mse_loss(x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    sq = (x - t) ** 2
    return sq if reduction == "none" else np.asarray(sq.mean() if reduction == "mean" else sq.sum(), x.dtype)


def cross_entropy(
    x: np.ndarray,
    t: np.ndarray,
    weight: tuple[float, ...] | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> np.ndarray:
    """torch.nn.functional.cross_entropy over logits [C], [N, C] or [N, C, ...]: class indices (a target
    without the class axis) or class probabilities (a target shaped like the logits)."""
    if x.ndim == 1:
        loss = cross_entropy(x[None], t[None], weight, ignore_index, reduction, label_smoothing)
        return loss.reshape(()) if reduction == "none" else loss
    c = x.shape[1]
    logp = log_softmax(x, 1)
    if weight is None and not label_smoothing and t.shape != x.shape and reduction == "mean":
        return _mean_nll(logp, t, ignore_index)  # the common case, in fewer calls
    w = (np.ones(c, x.dtype) if weight is None else np.asarray(weight, x.dtype)).reshape((1, c) + (1,) * (x.ndim - 2))
    if t.shape == x.shape:  # probabilities: torch multiplies, so a -inf log-probability times 0 is NaN there too
        if label_smoothing:
            t = t * (1 - label_smoothing) + label_smoothing / c
        loss = -(logp * t * w).sum(axis=1)
        if reduction == "mean":
            return np.asarray(loss.sum() / loss.size if loss.size else np.nan, x.dtype)
    else:
        valid = t != ignore_index
        safe = np.where(valid, t, 0)
        if ((safe < 0) | (safe >= c)).any():
            bad = safe[(safe < 0) | (safe >= c)].flat[0]
            raise IndexError(f"cross_entropy: target {int(bad)} is out of range for {c} classes")
        wt = w.reshape(c)[safe] * valid
        picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
        loss = -np.where(valid, picked, 0) * wt  # an ignored target's class may have a -inf log-probability
        if label_smoothing:
            smooth = np.where(valid, -(logp * w).sum(axis=1), 0)
            loss = (1 - label_smoothing) * loss + (label_smoothing / c) * smooth
        if reduction == "mean":
            return np.asarray(loss.sum() / wt.sum(), x.dtype)
    if reduction == "none":
        return loss.astype(x.dtype, copy=False)
    return np.asarray(loss.sum(), x.dtype)


def _mean_nll(logp: np.ndarray, t: np.ndarray, ignore_index: int) -> np.ndarray:
    """cross_entropy's mean over class indices, no weights or smoothing: -mean of the picked log-probabilities."""
    c = logp.shape[1]
    rows = _class_rows(t, c) if logp.ndim == 2 and not 0 <= ignore_index < c else None
    if rows is not None:  # every target a class, none ignored: the general path's sum without its masks
        return np.asarray(-logp[rows, t].sum() / logp.dtype.type(len(t)), logp.dtype)
    valid = t != ignore_index
    safe = np.where(valid, t, 0)
    if safe.size and (safe.min() < 0 or safe.max() >= logp.shape[1]):
        bad = safe[(safe < 0) | (safe >= logp.shape[1])].flat[0]
        raise IndexError(f"cross_entropy: target {int(bad)} is out of range for {logp.shape[1]} classes")
    if logp.ndim == 2:
        picked = logp[np.arange(len(safe)), safe]
    else:
        picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    total = -np.where(valid, picked, 0).sum()  # an ignored target's class may have a -inf log-probability
    return np.asarray(total / logp.dtype.type(np.count_nonzero(valid)), logp.dtype)


def _class_rows(t: np.ndarray, classes: int) -> np.ndarray | None:
    """The row numbers of `t` when it is non-empty and every target is a class in [0, classes), else None."""
    return np.arange(len(t)) if t.size and indices_in_range(t, classes) else None


def cross_entropy_grad(x: np.ndarray, t: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The mean cross-entropy's logits gradient over [N, C]: (softmax - one_hot) * g / valid count, in one
    softmax rather than the decomposition's dozen calls; targets outside [0, C) are ignored (zero rows)."""
    return cross_entropy_grad_softmax((softmax(x, 1), _class_rows(t, x.shape[1])), t, g)


def cross_entropy_softmax(
    x: np.ndarray, t: np.ndarray, ignore_index: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray | None]]:
    """cross_entropy's common case (mean over [N, C] class indices, no weight or smoothing), with softmax(x) and
    the row numbers when every target is a class, from one exp and one test of the targets: the joint graph's
    loss node when `cross_entropy_grad_softmax` reads them (fusions.py)."""
    # The ufuncs' reduce, which ndarray.max and .sum call through a Python wrapper: a step this small feels it.
    shifted = x - np.maximum.reduce(x, axis=1, keepdims=True)
    e = np.exp(shifted)
    total = np.add.reduce(e, axis=1, keepdims=True)
    log_total = np.log(total)
    rows = _class_rows(t, x.shape[1])
    if rows is not None:  # the terms of -logp[i, t[i]], summed as _mean_nll sums them
        terms = log_total[:, 0] - shifted[rows, t]
        loss = np.asarray(np.add.reduce(terms, axis=None) / x.dtype.type(len(t)), x.dtype)
    else:
        loss = _mean_nll(shifted - log_total, t, ignore_index)
    return loss, (e / total, rows)


def cross_entropy_grad_softmax(
    prepared: tuple[np.ndarray, np.ndarray | None], t: np.ndarray, g: np.ndarray
) -> np.ndarray:
    """cross_entropy_grad given (softmax(x), the row numbers when every target is a class, else None); the
    softmax may be overwritten (the joint graph's own, read only here)."""
    s, rows = prepared
    if rows is not None:
        s[rows, t] -= 1
        s *= g / s.dtype.type(len(t))
        return s
    hit = t[:, None] == np.arange(s.shape[1])  # one_hot as bools: an ignored target hits no class
    count = np.count_nonzero(hit)
    s = s * hit.any(axis=1, keepdims=True)  # ignored rows: their softmax drops out as well
    return (s - hit) * (g / s.dtype.type(count))


def embedding_grad(g: np.ndarray, idx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows of `g` added into zeros shaped like `weight`, at `idx`."""
    out = np.zeros_like(weight)
    np.add.at(out, idx.reshape(-1), g.reshape(-1, weight.shape[1]))
    return out


# -- gradient forms and indices ------------------------------------------------------------
def sum_like(g: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Sum `g` down to `like`'s shape, undoing broadcasting."""
    shape = np.shape(like)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def expand_reduced(g: np.ndarray, like: np.ndarray, axis: Any, keepdim: bool, scale: bool) -> np.ndarray:
    """Broadcast a reduction's result back over `like`; divided by the reduced count when `scale`."""
    axes = normalize_axes(axis, like.ndim)
    if not keepdim:
        g = np.expand_dims(g, axes)
    if scale:
        g = g / np.asarray(math.prod(like.shape[a] for a in axes) or 1, g.dtype)
    return np.broadcast_to(g, like.shape)


def one_hot(idx: np.ndarray, num_classes: int, dtype: np.dtype[Any]) -> np.ndarray:
    """1 at each index along a new last axis; an index outside [0, num_classes) gives zeros."""
    return (idx[..., None] == np.arange(num_classes)).astype(dtype)
