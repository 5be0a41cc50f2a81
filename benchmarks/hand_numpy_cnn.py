"""The quick start CNN written by hand in NumPy (im2col by strided views + BLAS), forward and backward.

This is the reference a careful NumPy programmer would write; the benchmark compares
the compiled Mithril model against it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, padding 1 windows: [N, H, W, C, 3, 3] (a copy, ready for BLAS)."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, c, h, w = x.shape
    s = xp.strides
    win = as_strided(xp, (n, h, w, c, 3, 3), (s[0], s[2], s[3], s[1], s[2], s[3]))
    return win.reshape(n * h * w, c * 9)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, wd = x.shape
    cols = _im2col(x)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _conv_back(g: np.ndarray, cols: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    n, c, h, wd = x.shape
    g2 = g.transpose(0, 2, 3, 1).reshape(n * h * wd, -1)
    dw = (g2.T @ cols).reshape(w.shape)
    db = g2.sum(0)
    dcols = (g2 @ w.reshape(w.shape[0], -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, wd + 2), x.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + h, j : j + wd] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1], dw, db


def _bn(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, ...]:
    mean = x.mean((0, 2, 3), keepdims=True)
    inv = 1.0 / np.sqrt(x.var((0, 2, 3), keepdims=True) + eps)
    xhat = (x - mean) * inv
    return xhat * gamma[:, None, None] + beta[:, None, None], xhat, inv


def _bn_back(g: np.ndarray, xhat: np.ndarray, inv: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, ...]:
    m = g.size // g.shape[1]
    dgamma = (g * xhat).sum((0, 2, 3))
    dbeta = g.sum((0, 2, 3))
    dxhat = g * gamma[:, None, None]
    dx = m * dxhat - dxhat.sum((0, 2, 3), keepdims=True) - xhat * (dxhat * xhat).sum((0, 2, 3), keepdims=True)
    return dx * inv / m, dgamma, dbeta


def _pool(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))


def _pool_back(g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    mask = x.reshape(n, c, h // 2, 2, w // 2, 2) == y[:, :, :, None, :, None]
    return (mask * g[:, :, :, None, :, None]).reshape(x.shape)


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the CNN in training mode (batch statistics)."""
    h, _ = _conv(x, p["conv2d_0.weight"], p["conv2d_0.bias"])
    h = _pool(np.maximum(_bn(h, p["batchnorm2d_0.weight"], p["batchnorm2d_0.bias"])[0], 0))
    h, _ = _conv(h, p["conv2d_1.weight"], p["conv2d_1.bias"])
    h = _pool(np.maximum(_bn(h, p["batchnorm2d_1.weight"], p["batchnorm2d_1.bias"])[0], 0))
    h = np.maximum(h.reshape(h.shape[0], -1) @ p["linear_0.weight"].T + p["linear_0.bias"], 0)
    return h @ p["linear_1.weight"].T + p["linear_1.bias"]


def forward_backward(p: dict[str, np.ndarray], x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits and parameter gradients for output cotangent `g` (ties in max pool share the gradient)."""
    c1, cols1 = _conv(x, p["conv2d_0.weight"], p["conv2d_0.bias"])
    b1, xh1, inv1 = _bn(c1, p["batchnorm2d_0.weight"], p["batchnorm2d_0.bias"])
    r1 = np.maximum(b1, 0)
    p1 = _pool(r1)
    c2, cols2 = _conv(p1, p["conv2d_1.weight"], p["conv2d_1.bias"])
    b2, xh2, inv2 = _bn(c2, p["batchnorm2d_1.weight"], p["batchnorm2d_1.bias"])
    r2 = np.maximum(b2, 0)
    p2 = _pool(r2)
    flat = p2.reshape(p2.shape[0], -1)
    f1 = np.maximum(flat @ p["linear_0.weight"].T + p["linear_0.bias"], 0)
    out = f1 @ p["linear_1.weight"].T + p["linear_1.bias"]
    grads = {"linear_1.weight": g.T @ f1, "linear_1.bias": g.sum(0)}
    df1 = (g @ p["linear_1.weight"]) * (f1 > 0)
    grads["linear_0.weight"], grads["linear_0.bias"] = df1.T @ flat, df1.sum(0)
    dp2 = (df1 @ p["linear_0.weight"]).reshape(p2.shape)
    db2 = _pool_back(dp2, r2, p2) * (r2 > 0)
    dc2, grads["batchnorm2d_1.weight"], grads["batchnorm2d_1.bias"] = _bn_back(
        db2, xh2, inv2, p["batchnorm2d_1.weight"]
    )
    dp1, grads["conv2d_1.weight"], grads["conv2d_1.bias"] = _conv_back(dc2, cols2, p1, p["conv2d_1.weight"])
    db1 = _pool_back(dp1, r1, p1) * (r1 > 0)
    dc1, grads["batchnorm2d_0.weight"], grads["batchnorm2d_0.bias"] = _bn_back(
        db1, xh1, inv1, p["batchnorm2d_0.weight"]
    )
    _, grads["conv2d_0.weight"], grads["conv2d_0.bias"] = _conv_back(dc1, cols1, x, p["conv2d_0.weight"])
    return out, grads
