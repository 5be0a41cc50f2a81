"""NumPy kernels for the ops that need more than one expression, with their gradients.

Convolution and pooling use strided window views and BLAS products; loops run over
kernel offsets (kh * kw iterations), never over pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mithril.models.rules import window_out_size

Pair = tuple[int, int]

_erf = np.frompyfunc(math.erf, 1, 1)


def _pad(x: np.ndarray, padding: Pair, value: float = 0.0) -> np.ndarray:
    ph, pw = padding
    if not ph and not pw:
        return x
    width = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    return np.pad(x, width, constant_values=value)


def _windows(xp: np.ndarray, out: Pair, kernel: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """View [..., Ho, Wo, kh, kw] of the padded input."""
    *lead, _, _ = xp.shape
    *lead_strides, sh_, sw_ = xp.strides
    shape = (*lead, out[0], out[1], kernel[0], kernel[1])
    strides = (*lead_strides, sh_ * stride[0], sw_ * stride[1], sh_ * dilation[0], sw_ * dilation[1])
    return as_strided(xp, shape, strides, writeable=False)


def _extra_pad(xp: np.ndarray, out: Pair, kernel: Pair, stride: Pair, dilation: Pair, value: float) -> np.ndarray:
    """Pad the bottom/right so every window of a ceil_mode output is in bounds."""
    need_h = (out[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1 - xp.shape[-2]
    need_w = (out[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1 - xp.shape[-1]
    if need_h <= 0 and need_w <= 0:
        return xp
    width = [(0, 0)] * (xp.ndim - 2) + [(0, max(need_h, 0)), (0, max(need_w, 0))]
    return np.pad(xp, width, constant_values=value)


def _geometry(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil: bool) -> Pair:
    return (
        window_out_size(x.shape[-2], kernel[0], stride[0], padding[0], dilation[0], ceil),
        window_out_size(x.shape[-1], kernel[1], stride[1], padding[1], dilation[1], ceil),
    )


def _scatter(
    grad_windows: np.ndarray,
    padded_shape: tuple[int, ...],
    out: Pair,
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
    padding: Pair,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Sum window gradients [..., Ho, Wo, kh, kw] back onto the input of shape `shape`."""
    dxp = np.zeros(padded_shape, grad_windows.dtype)
    for i in range(kernel[0]):
        hi = i * dilation[0]
        for j in range(kernel[1]):
            wj = j * dilation[1]
            dxp[
                ...,
                hi : hi + stride[0] * (out[0] - 1) + 1 : stride[0],
                wj : wj + stride[1] * (out[1] - 1) + 1 : stride[1],
            ] += grad_windows[..., i, j]
    ph, pw = padding
    return dxp[..., ph : ph + shape[-2], pw : pw + shape[-1]]


# -- convolution ------------------------------------------------------------------------
def conv2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> np.ndarray:
    """torch.nn.functional.conv2d for [N, C, H, W] input."""
    kernel = (w.shape[2], w.shape[3])
    out = _geometry(x, kernel, stride, padding, dilation, False)
    win = _windows(_pad(x, padding), out, kernel, stride, dilation)  # [N, C, Ho, Wo, kh, kw]
    n, c = x.shape[:2]
    if groups == 1:
        y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [N, Ho, Wo, O]
    else:
        wg = w.reshape(groups, -1, *w.shape[1:])
        wing = win.reshape(n, groups, c // groups, *win.shape[2:])
        y = np.einsum("ngchwij,gocij->nhwgo", wing, wg, optimize=True).reshape(n, out[0], out[1], -1)
    if b is not None:
        y += b
    return y.transpose(0, 3, 1, 2)


def conv2d_grad_input(
    g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> np.ndarray:
    kernel = (w.shape[2], w.shape[3])
    out = (g.shape[2], g.shape[3])
    if groups == 1:
        gw = np.tensordot(g, w, axes=([1], [0]))  # [N, Ho, Wo, C, kh, kw]
    else:
        n = g.shape[0]
        gg = g.reshape(n, groups, -1, *out)
        wg = w.reshape(groups, -1, *w.shape[1:])
        gw = np.einsum("ngohw,gocij->nhwgcij", gg, wg, optimize=True).reshape(n, *out, -1, *kernel)
    gw = gw.transpose(0, 3, 1, 2, 4, 5)  # [N, C, Ho, Wo, kh, kw]
    padded = (*x.shape[:2], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    return _scatter(gw, padded, out, kernel, stride, dilation, padding, x.shape)


def conv2d_grad_weight(
    g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> np.ndarray:
    kernel = (w.shape[2], w.shape[3])
    out = (g.shape[2], g.shape[3])
    win = _windows(_pad(x, padding), out, kernel, stride, dilation)
    if groups == 1:
        return np.tensordot(g, win, axes=([0, 2, 3], [0, 2, 3]))
    n, c = x.shape[:2]
    gg = g.reshape(n, groups, -1, *out)
    wing = win.reshape(n, groups, c // groups, *win.shape[2:])
    return np.einsum("ngohw,ngchwij->gocij", gg, wing, optimize=True).reshape(w.shape)


# -- pooling ----------------------------------------------------------------------------
def _tiles(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray | None:
    """[..., Ho, kh, Wo, kw] view when windows tile the input exactly (the common k == stride case)."""
    kh, kw = kernel_size
    h, w = x.shape[-2:]
    if stride != kernel_size or padding != (0, 0) or dilation != (1, 1) or h % kh or w % kw:
        return None
    return x.reshape(*x.shape[:-2], h // kh, kh, w // kw, kw)


def max_pool2d(
    x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> np.ndarray:
    tiles = _tiles(x, kernel_size, stride, padding, dilation)
    if tiles is not None:
        return tiles.max(axis=(-3, -1))
    out = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    xp = _extra_pad(_pad(x, padding, -np.inf), out, kernel_size, stride, dilation, -np.inf)
    return _windows(xp, out, kernel_size, stride, dilation).max(axis=(-2, -1))


def max_pool2d_grad(
    g: np.ndarray, x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> np.ndarray:
    tiles = _tiles(x, kernel_size, stride, padding, dilation)
    if tiles is not None:
        # first maximum of each tile, as torch routes it
        kh, kw = kernel_size
        flat = tiles.swapaxes(-3, -2).reshape(*g.shape, kh * kw)
        onehot = flat.argmax(axis=-1)[..., None] == np.arange(kh * kw)
        grad = (onehot * g[..., None]).reshape(*g.shape, kh, kw).swapaxes(-3, -2)
        return grad.reshape(x.shape)
    out = (g.shape[-2], g.shape[-1])
    xp = _extra_pad(_pad(x, padding, -np.inf), out, kernel_size, stride, dilation, -np.inf)
    win = _windows(xp, out, kernel_size, stride, dilation)
    first = win.reshape(*win.shape[:-2], -1).argmax(axis=-1)
    kk = kernel_size[0] * kernel_size[1]
    onehot = (first[..., None] == np.arange(kk)).reshape(*first.shape, *kernel_size)
    return _scatter(onehot * g[..., None, None], xp.shape, out, kernel_size, stride, dilation, padding, x.shape)


def _avg_divisor(
    x: np.ndarray,
    out: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Any:
    if divisor_override is not None:
        return float(divisor_override)
    ones = np.ones(x.shape[-2:], x.dtype)
    if count_include_pad:
        # Padding counts, but cells past the padded input (ceil_mode) do not.
        counted = np.ones((x.shape[-2] + 2 * padding[0], x.shape[-1] + 2 * padding[1]), x.dtype)
    else:
        counted = _pad(ones, padding)
    counted = _extra_pad(counted, out, kernel_size, stride, (1, 1), 0.0)
    return _windows(counted, out, kernel_size, stride, (1, 1)).sum(axis=(-2, -1))


def avg_pool2d(
    x: np.ndarray,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    out = _geometry(x, kernel_size, stride, padding, (1, 1), ceil_mode)
    xp = _extra_pad(_pad(x, padding), out, kernel_size, stride, (1, 1), 0.0)
    total = _windows(xp, out, kernel_size, stride, (1, 1)).sum(axis=(-2, -1))
    div = _avg_divisor(x, out, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return (total / div).astype(x.dtype, copy=False)


def avg_pool2d_grad(
    g: np.ndarray,
    x: np.ndarray,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> np.ndarray:
    out = (g.shape[-2], g.shape[-1])
    div = _avg_divisor(x, out, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    share = (g / div).astype(g.dtype, copy=False)
    padded = _extra_pad(_pad(np.empty(x.shape[-2:], np.bool_), padding), out, kernel_size, stride, (1, 1), 0).shape
    spread = np.broadcast_to(share[..., None, None], (*share.shape, *kernel_size))
    return _scatter(spread, (*x.shape[:-2], *padded), out, kernel_size, stride, (1, 1), padding, x.shape)


# -- normalisation ----------------------------------------------------------------------
def _bn_stats(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(var + eps)
    return mean, var, inv


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
    y = (x - mean[:, None, None]) * inv[:, None, None]
    if weight is not None:
        y = y * weight[:, None, None]
    if bias is not None:
        y = y + bias[:, None, None]
    y = y.astype(x.dtype, copy=False)
    if running_mean is None or running_var is None:
        return y
    n = x.size // x.shape[1]
    unbiased = var * (n / max(n - 1, 1))
    new_mean = ((1 - momentum) * running_mean + momentum * mean).astype(running_mean.dtype, copy=False)
    new_var = ((1 - momentum) * running_var + momentum * unbiased).astype(running_var.dtype, copy=False)
    return y, new_mean, new_var


def batch_norm_grad(g: np.ndarray, x: np.ndarray, weight: np.ndarray | None, eps: float, wrt: str) -> np.ndarray:
    mean, _, inv = _bn_stats(x, eps)
    xhat = (x - mean[:, None, None]) * inv[:, None, None]
    if wrt == "bias":
        return g.sum(axis=(0, 2, 3))
    if wrt == "weight":
        return (g * xhat).sum(axis=(0, 2, 3))
    dxhat = g * weight[:, None, None] if weight is not None else g
    n = x.size // x.shape[1]
    s1 = dxhat.sum(axis=(0, 2, 3))[:, None, None]
    s2 = (dxhat * xhat).sum(axis=(0, 2, 3))[:, None, None]
    return ((dxhat * n - s1 - xhat * s2) * (inv[:, None, None] / n)).astype(x.dtype, copy=False)


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
    return (x * scale[:, None, None] + shift[:, None, None]).astype(x.dtype, copy=False)


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


def layer_norm_grad(
    g: np.ndarray, x: np.ndarray, weight: np.ndarray | None, normalized_shape: tuple[int, ...], eps: float, wrt: str
) -> np.ndarray:
    axes = _ln_axes(x, normalized_shape)
    lead = tuple(range(x.ndim - len(normalized_shape)))
    mean = x.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * inv
    if wrt == "bias":
        return g.sum(axis=lead)
    if wrt == "weight":
        return (g * xhat).sum(axis=lead)
    dxhat = g * weight if weight is not None else g
    n = math.prod(normalized_shape)
    s1 = dxhat.sum(axis=axes, keepdims=True)
    s2 = (dxhat * xhat).sum(axis=axes, keepdims=True)
    return ((dxhat * n - s1 - xhat * s2) * (inv / n)).astype(x.dtype, copy=False)


# -- activations ------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        y = 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    else:
        y = 0.5 * x * (1 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
    return y.astype(x.dtype, copy=False)


def gelu_grad(g: np.ndarray, x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        t = np.tanh(inner)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    else:
        cdf = 0.5 * (1 + _erf(x / math.sqrt(2.0)).astype(x.dtype))
        d = cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return (g * d).astype(g.dtype, copy=False)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def dropout(x: np.ndarray, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (output, mask) with the mask already scaled by 1/(1-p)."""
    if p == 0.0:
        mask = np.ones_like(x)
    elif p == 1.0:
        mask = np.zeros_like(x)
    else:
        mask = ((rng.random(x.shape) >= p) / (1.0 - p)).astype(x.dtype)
    return x * mask, mask


# -- losses -----------------------------------------------------------------------------
def mse_loss(x: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    sq = (x - t) ** 2
    return sq if reduction == "none" else np.asarray(sq.mean() if reduction == "mean" else sq.sum(), x.dtype)


def mse_loss_grad(g: np.ndarray, x: np.ndarray, t: np.ndarray, reduction: str, sign: float) -> np.ndarray:
    scale = 2.0 / x.size if reduction == "mean" else 2.0
    return (sign * scale * g * (x - t)).astype(x.dtype, copy=False)


def _ce_parts(x: np.ndarray, t: np.ndarray, weight: tuple[float, ...] | None, ignore_index: int) -> Any:
    c = x.shape[1]
    w = np.ones(c, x.dtype) if weight is None else np.asarray(weight, x.dtype)
    valid = t != ignore_index
    safe = np.where(valid, t, 0)
    if ((safe < 0) | (safe >= c)).any():
        bad = safe[(safe < 0) | (safe >= c)].flat[0]
        raise IndexError(f"cross_entropy: target {int(bad)} is out of range for {c} classes")
    logp = log_softmax(x, 1)
    wt = w[safe] * valid  # [N, ...]
    return c, w, valid, safe, logp, wt


def _gather(logp: np.ndarray, safe: np.ndarray) -> np.ndarray:
    return np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]


def cross_entropy(
    x: np.ndarray,
    t: np.ndarray,
    weight: tuple[float, ...] | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> np.ndarray:
    c, w, valid, safe, logp, wt = _ce_parts(x, t, weight, ignore_index)
    nll = -_gather(logp, safe) * wt
    if label_smoothing:
        shape = (1, c) + (1,) * (x.ndim - 2)
        smooth = -(logp * w.reshape(shape)).sum(axis=1) * valid
        loss = (1 - label_smoothing) * nll + (label_smoothing / c) * smooth
    else:
        loss = nll
    if reduction == "none":
        return loss.astype(x.dtype, copy=False)
    if reduction == "sum":
        return np.asarray(loss.sum(), x.dtype)
    return np.asarray(loss.sum() / wt.sum(), x.dtype)


def cross_entropy_grad(
    g: np.ndarray,
    x: np.ndarray,
    t: np.ndarray,
    weight: tuple[float, ...] | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> np.ndarray:
    c, w, valid, safe, logp, wt = _ce_parts(x, t, weight, ignore_index)
    scale = g if reduction == "none" else np.broadcast_to(g / wt.sum() if reduction == "mean" else g, t.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    onehot = (np.arange(c).reshape(shape) == safe[:, None]).astype(x.dtype)
    dlogp = -(1 - label_smoothing) * onehot * (wt * scale)[:, None]
    if label_smoothing:
        dlogp = dlogp - (label_smoothing / c) * w.reshape(shape) * (valid * scale)[:, None]
    probs = np.exp(logp)
    return (dlogp - probs * dlogp.sum(axis=1, keepdims=True)).astype(x.dtype, copy=False)


def embedding_grad(g: np.ndarray, idx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out = np.zeros_like(weight)
    np.add.at(out, idx.reshape(-1), g.reshape(-1, weight.shape[1]))
    return out
