"""N-d NumPy convolution and pooling (mithril_numpy.windows) against torch, forward and gradients, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from mithril.testing.window_cases import AVG_CASES, CONV_CASES, MAX_CASES, AvgCase, ConvCase, MaxCase, torch_pool
from mithril_numpy import windows

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


def _close(ours: np.ndarray, ref: torch.Tensor) -> None:
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv_forward_and_grads_match_torch(case: ConvCase) -> None:
    rng = np.random.default_rng(0)
    n = len(case.kernel)
    x = rng.standard_normal(case.shape)
    w = rng.standard_normal((case.out_channels, case.shape[1] // case.groups, *case.kernel))
    b = rng.standard_normal(case.out_channels) if case.bias else None
    attrs = (case.stride, case.padding, case.dilation, case.groups)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = getattr(F, f"conv{n}d")(tx, tw, None if b is None else torch.tensor(b), *attrs)
    y = windows.conv(x, w, b, *attrs)
    _close(y, ty)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    _close(windows.conv_input_grad(g, w, x, *attrs), tx.grad)
    _close(windows.conv_weight_grad(g, x, w, *attrs), tw.grad)


@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.name)
def test_max_pool_forward_and_grad_match_torch(case: MaxCase) -> None:
    rng = np.random.default_rng(1)
    n = len(case.kernel)
    x = rng.integers(0, 3, case.shape).astype(np.float64) if case.ties else rng.standard_normal(case.shape)
    attrs = (case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_pool("max_pool", tx, n, *attrs)
    y = windows.max_pool(x, *attrs)
    _close(y, ty)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    _close(windows.max_pool_grad(g, x, *attrs), tx.grad)


@pytest.mark.parametrize(
    "case",
    [
        MaxCase("1d-pad", (2, 9), (3,), (2,), (1,), (1,), True, False),
        MaxCase("2d-tiles", (2, 6, 4), (2, 2), (2, 2), (0, 0), (1, 1), False, False),
        MaxCase("2d-pad-dil", (2, 7, 8), (3, 2), (2, 2), (1, 1), (2, 1), True, False),
    ],
    ids=lambda c: c.name,
)
def test_max_pool_nan_and_minus_inf_windows_route_like_torch(case: MaxCase) -> None:
    """A window with NaN sends its gradient to its last NaN; an all -inf window to its first cell inside the input."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(case.shape)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, flat.size // 4, replace=False)] = np.nan
    flat[rng.choice(flat.size, flat.size // 3, replace=False)] = -np.inf
    x[0] = -np.inf
    attrs = (case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_pool("max_pool", tx, len(case.kernel), *attrs)
    y = windows.max_pool(x, *attrs)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    _close(windows.max_pool_grad(g, x, *attrs), tx.grad)


@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.name)
def test_avg_pool_forward_and_grad_match_torch(case: AvgCase) -> None:
    rng = np.random.default_rng(3)
    n = len(case.kernel)
    x = rng.standard_normal(case.shape)
    attrs = (case.kernel, case.stride, case.padding, case.ceil_mode, case.count_include_pad, case.divisor_override)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_pool("avg_pool", tx, n, *attrs)
    y = windows.avg_pool(x, *attrs)
    _close(y, ty)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(g))
    _close(windows.avg_pool_grad(g, x, *attrs), tx.grad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_every_function_keeps_the_input_dtype(dtype: type) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 6, 6)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    conv = ((1, 2), (1, 1), (1, 1), 2)
    y = windows.conv(x, w, b, *conv)
    assert y.dtype == dtype
    assert windows.conv_input_grad(y, w, x, *conv).dtype == dtype
    assert windows.conv_weight_grad(y, x, w, *conv).dtype == dtype
    for pool in (((2, 2), (2, 2), (0, 0), (1, 1), False), ((3, 3), (2, 2), (1, 1), (1, 1), True)):
        y = windows.max_pool(x, *pool)
        assert y.dtype == dtype and windows.max_pool_grad(y, x, *pool).dtype == dtype
    avg = ((3, 3), (2, 2), (1, 1), True, False, None)
    y = windows.avg_pool(x, *avg)
    assert y.dtype == dtype and windows.avg_pool_grad(y, x, *avg).dtype == dtype
