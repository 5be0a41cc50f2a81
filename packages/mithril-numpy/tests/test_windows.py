"""N-d NumPy convolution and pooling (mithril_numpy.windows) against torch, forward and gradients, in float64."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from mithril_numpy import windows

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


class ConvCase(NamedTuple):
    name: str
    shape: tuple[int, ...]  # input [N, C, *S]
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool


class MaxCase(NamedTuple):
    name: str
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    ties: bool  # small integer values, so windows hold tied maxima


class AvgCase(NamedTuple):
    name: str
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None


CONV_CASES = [
    ConvCase("1d-plain", (2, 3, 11), 4, (3,), (1,), (0,), (1,), 1, True),
    ConvCase("1d-stride2-pad2-dil2", (2, 4, 13), 6, (3,), (2,), (2,), (2,), 1, False),
    ConvCase("1d-groups2", (2, 4, 9), 6, (4,), (3,), (1,), (1,), 2, True),
    ConvCase("2d-quickstart", (4, 1, 28, 28), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ConvCase("2d-stride-pad-dil-mixed", (2, 3, 10, 9), 5, (3, 2), (2, 1), (1, 2), (2, 1), 1, True),
    ConvCase("2d-groups3", (2, 6, 8, 7), 9, (3, 3), (1, 2), (1, 0), (1, 1), 3, False),
    ConvCase("2d-depthwise", (2, 4, 7, 7), 4, (3, 3), (2, 2), (1, 1), (2, 2), 4, True),
    ConvCase("3d-plain", (2, 2, 5, 6, 4), 3, (2, 3, 2), (1, 1, 1), (0, 1, 0), (1, 1, 1), 1, True),
    ConvCase("3d-stride-pad-dil", (1, 3, 7, 6, 8), 4, (3, 2, 3), (2, 1, 3), (1, 1, 2), (1, 2, 1), 1, False),
    ConvCase("3d-groups2", (2, 4, 5, 5, 5), 6, (3, 3, 3), (2, 2, 1), (1, 1, 1), (1, 1, 2), 2, True),
]

MAX_CASES = [
    MaxCase("1d-k2s2", (2, 3, 12), (2,), (2,), (0,), (1,), False, False),
    MaxCase("1d-k3s2-pad1-ties", (2, 3, 11), (3,), (2,), (1,), (1,), False, True),
    MaxCase("1d-k3s2-dil2-ceil", (3, 10), (3,), (2,), (1,), (2,), True, False),
    MaxCase("1d-ceil-last-window-in-padding", (2, 3, 5), (2,), (2,), (1,), (1,), True, True),
    MaxCase("2d-tiles", (2, 3, 8, 6), (2, 2), (2, 2), (0, 0), (1, 1), False, False),
    MaxCase("2d-tiles-ties", (2, 3, 8, 6), (2, 3), (2, 3), (0, 0), (1, 1), False, True),
    MaxCase("2d-overlap-ties", (2, 3, 7, 8), (3, 3), (1, 2), (1, 1), (1, 1), False, True),
    MaxCase("2d-dil-ceil", (3, 9, 10), (2, 3), (2, 2), (1, 1), (2, 1), True, False),
    MaxCase("2d-ceil-last-window-in-padding", (2, 2, 5, 7), (2, 3), (2, 3), (1, 1), (1, 1), True, True),
    MaxCase("2d-rank5", (2, 2, 2, 7, 6), (3, 2), (2, 2), (1, 0), (1, 1), True, True),
    MaxCase("3d-tiles", (2, 2, 4, 6, 4), (2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), False, True),
    MaxCase("3d-pad-dil-ceil", (2, 6, 7, 5), (2, 3, 2), (2, 2, 1), (1, 1, 0), (1, 1, 2), True, False),
    MaxCase("3d-rank6-ties", (2, 1, 2, 2, 5, 6, 5), (3, 2, 2), (2, 2, 2), (1, 1, 0), (1, 1, 1), True, True),
]

AVG_CASES = [
    AvgCase("1d-k2s2", (2, 3, 12), (2,), (2,), (0,), False, True, None),
    AvgCase("1d-pad-exclude", (3, 11), (3,), (2,), (1,), False, False, None),
    AvgCase("1d-ceil-last-window-in-padding", (2, 3, 5), (2,), (2,), (1,), True, True, None),
    AvgCase("1d-divisor-override", (2, 3, 9), (3,), (2,), (1,), True, False, 2),
    AvgCase("2d-pad-include", (2, 3, 7, 8), (3, 3), (2, 2), (1, 1), False, True, None),
    AvgCase("2d-pad-exclude-ceil", (2, 3, 7, 8), (3, 2), (2, 3), (1, 1), True, False, None),
    AvgCase("2d-ceil-include", (3, 6, 9), (3, 3), (2, 2), (1, 0), True, True, None),
    AvgCase("2d-divisor-override", (2, 3, 7, 8), (3, 3), (2, 2), (1, 1), True, True, 5),
    AvgCase("2d-rank5", (2, 2, 2, 6, 7), (2, 3), (2, 1), (0, 1), False, False, None),
    AvgCase("3d-plain", (2, 2, 4, 6, 4), (2, 2, 2), (2, 2, 2), (0, 0, 0), False, True, None),
    AvgCase("3d-pad-exclude-ceil", (2, 5, 7, 6), (3, 2, 2), (2, 2, 3), (1, 1, 1), True, False, None),
    AvgCase("3d-rank6-divisor", (2, 1, 2, 2, 5, 6, 5), (2, 3, 2), (2, 2, 2), (1, 1, 0), True, False, 7),
]


def _torch_pool(fn: str, x: torch.Tensor, n: int, *args: tuple[int, ...] | bool | int | None) -> torch.Tensor:
    """torch's {fn}{n}d over the last n axes of any rank (through a [-1, *S] reshape).

    avg_pool1d takes no divisor_override, so a 1-d average pool runs as a 2-d one over [1, S] planes.
    """
    if fn == "avg_pool" and n == 1:
        (k,), (s,), (p,), *rest = args
        return _torch_pool(fn, x[..., None, :], 2, (1, k), (1, s), (0, p), *rest)[..., 0, :]
    out = getattr(F, f"{fn}{n}d")(x.reshape(-1, *x.shape[-n:]), *args)
    return out.reshape(*x.shape[:-n], *out.shape[-n:])


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
    ty = _torch_pool("max_pool", tx, n, *attrs)
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
    ty = _torch_pool("max_pool", tx, len(case.kernel), *attrs)
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
    ty = _torch_pool("avg_pool", tx, n, *attrs)
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
