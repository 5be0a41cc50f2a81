"""The 1-D CNN of mithril.testing.models.quickstart_cnn1d written by hand in NumPy, forward and backward.

Conv1d(k=5, padding=2) by im2col (strided view + BLAS), BatchNorm1d in training mode, ReLU,
MaxPool1d(2), Flatten, Linear: the reference a careful NumPy programmer would write, which the
benchmark compares the compiled Mithril model against.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

KERNEL, PADDING = 5, 2


def _im2col(x: np.ndarray) -> np.ndarray:
    """Stride-1 windows of the padded input as [N * L, C * KERNEL] (a copy, ready for BLAS)."""
    n, c, length = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (PADDING, PADDING)))
    s = xp.strides
    return as_strided(xp, (n, length, c, KERNEL), (s[0], s[2], s[1], s[2])).reshape(n * length, c * KERNEL)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convolution output [N, O, L] and the im2col matrix the backward pass reuses."""
    n, _, length = x.shape
    cols = _im2col(x)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(n, length, -1).transpose(0, 2, 1), cols


def _bn(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, ...]:
    """Training-mode batch norm over (N, L): output, normalized input, 1 / std."""
    mean = x.mean((0, 2), keepdims=True)
    inv = 1.0 / np.sqrt(x.var((0, 2), keepdims=True) + eps)
    xhat = (x - mean) * inv
    return xhat * gamma[:, None] + beta[:, None], xhat, inv


def _pool(x: np.ndarray) -> np.ndarray:
    """Max pooling, window 2, stride 2."""
    n, c, length = x.shape
    return x.reshape(n, c, length // 2, 2).max(3)


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits in training mode (batch statistics)."""
    h, _ = _conv(x, p["conv1d_0.weight"], p["conv1d_0.bias"])
    h = _pool(np.maximum(_bn(h, p["batchnorm1d_0.weight"], p["batchnorm1d_0.bias"])[0], 0))
    return h.reshape(h.shape[0], -1) @ p["linear_0.weight"].T + p["linear_0.bias"]


def forward_backward(p: dict[str, np.ndarray], x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits and parameter gradients for output cotangent `g` (ties in max pool share the gradient)."""
    c1, cols = _conv(x, p["conv1d_0.weight"], p["conv1d_0.bias"])
    gamma = p["batchnorm1d_0.weight"]
    b1, xhat, inv = _bn(c1, gamma, p["batchnorm1d_0.bias"])
    r1 = np.maximum(b1, 0)
    p1 = _pool(r1)
    flat = p1.reshape(p1.shape[0], -1)
    out = flat @ p["linear_0.weight"].T + p["linear_0.bias"]
    grads = {"linear_0.weight": g.T @ flat, "linear_0.bias": g.sum(0)}
    dp1 = (g @ p["linear_0.weight"]).reshape(p1.shape)
    n, c, length = r1.shape
    mask = r1.reshape(n, c, length // 2, 2) == p1[:, :, :, None]
    db1 = (mask * dp1[:, :, :, None]).reshape(r1.shape) * (r1 > 0)
    grads["batchnorm1d_0.weight"] = (db1 * xhat).sum((0, 2))
    grads["batchnorm1d_0.bias"] = db1.sum((0, 2))
    m = n * length
    dxhat = db1 * gamma[:, None]
    dc1 = (m * dxhat - dxhat.sum((0, 2), keepdims=True) - xhat * (dxhat * xhat).sum((0, 2), keepdims=True)) * inv / m
    w = p["conv1d_0.weight"]
    g2 = dc1.transpose(0, 2, 1).reshape(m, -1)
    grads["conv1d_0.weight"] = (g2.T @ cols).reshape(w.shape)
    grads["conv1d_0.bias"] = g2.sum(0)
    return out, grads
