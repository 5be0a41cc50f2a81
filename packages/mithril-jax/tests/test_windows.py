"""N-d jax convolution and pooling (mithril_jax.windows) against torch, forward and jax.vjp, in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import pytest

from mithril_jax import windows

jax.config.update("jax_enable_x64", True)  # process-wide; the jax backend turns it on for float64 too

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


CONV_CASES = [  # fewer than the NumPy tests: each case costs a jax compile
    ConvCase("1d-stride2-pad2-dil2", (2, 4, 13), 6, (3,), (2,), (2,), (2,), 1, False),
    ConvCase("1d-groups2", (2, 4, 9), 6, (4,), (3,), (1,), (1,), 2, True),
    ConvCase("2d-stride-pad-dil-mixed", (2, 3, 10, 9), 5, (3, 2), (2, 1), (1, 2), (2, 1), 1, True),
    ConvCase("2d-groups3", (2, 6, 8, 7), 9, (3, 3), (1, 2), (1, 0), (1, 1), 3, False),
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


def _jit_vjp(fn: Callable[..., jax.Array], g: np.ndarray, *args: np.ndarray) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """(fn(*args), the vjp of fn at args for cotangent g), traced and compiled once (eager jax compiles per op)."""
    return jax.jit(lambda g, *args: (fn(*args), jax.vjp(fn, *args)[1](g)))(g, *args)


def _close(ours: jax.Array, ref: torch.Tensor) -> None:
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv_forward_and_vjp_match_torch(case: ConvCase) -> None:
    rng = np.random.default_rng(0)
    n = len(case.kernel)
    x = rng.standard_normal(case.shape)
    w = rng.standard_normal((case.out_channels, case.shape[1] // case.groups, *case.kernel))
    b = rng.standard_normal(case.out_channels)
    attrs = (case.stride, case.padding, case.dilation, case.groups)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = getattr(F, f"conv{n}d")(tx, tw, tb if case.bias else None, *attrs)
    g = rng.standard_normal(ty.shape)
    if case.bias:
        y, grads = _jit_vjp(lambda x, w, b: windows.conv(x, w, b, *attrs), g, x, w, b)
    else:
        y, grads = _jit_vjp(lambda x, w: windows.conv(x, w, None, *attrs), g, x, w)
    _close(y, ty)
    ty.backward(torch.tensor(g))
    for ours, ref in zip(grads, (tx, tw, tb)):
        _close(ours, ref.grad)


@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.name)
def test_max_pool_forward_and_vjp_match_torch(case: MaxCase) -> None:
    rng = np.random.default_rng(1)
    n = len(case.kernel)
    x = rng.integers(0, 3, case.shape).astype(np.float64) if case.ties else rng.standard_normal(case.shape)
    attrs = (case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode)
    tx = torch.tensor(x, requires_grad=True)
    ty = _torch_pool("max_pool", tx, n, *attrs)
    g = rng.standard_normal(ty.shape)
    y, (grad,) = _jit_vjp(lambda x: windows.max_pool(x, *attrs), g, x)
    _close(y, ty)
    ty.backward(torch.tensor(g))
    _close(grad, tx.grad)


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
    g = rng.standard_normal(ty.shape)
    y, (grad,) = _jit_vjp(lambda x: windows.max_pool(x, *attrs), g, x)
    np.testing.assert_array_equal(np.asarray(y), ty.detach().numpy())
    ty.backward(torch.tensor(g))
    _close(grad, tx.grad)


@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.name)
def test_avg_pool_forward_and_vjp_match_torch(case: AvgCase) -> None:
    rng = np.random.default_rng(3)
    n = len(case.kernel)
    x = rng.standard_normal(case.shape)
    attrs = (case.kernel, case.stride, case.padding, case.ceil_mode, case.count_include_pad, case.divisor_override)
    tx = torch.tensor(x, requires_grad=True)
    ty = _torch_pool("avg_pool", tx, n, *attrs)
    g = rng.standard_normal(ty.shape)
    y, (grad,) = _jit_vjp(lambda x: windows.avg_pool(x, *attrs), g, x)
    _close(y, ty)
    ty.backward(torch.tensor(g))
    _close(grad, tx.grad)


def test_jit_grad_of_a_small_cnn_matches_torch() -> None:
    """conv -> max_pool -> avg_pool under jax.jit(jax.grad), attributes closed over as static tuples."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    conv, pool, avg = ((1, 1), (1, 1), (1, 1), 1), ((2, 2), (2, 2), (0, 0), (1, 1), True), ((2, 2), (1, 1), (1, 1))

    def loss(x: jax.Array, w: jax.Array) -> jax.Array:
        h = windows.max_pool(windows.conv(x, w, None, *conv), *pool)
        return (windows.avg_pool(h, *avg, False, False, None) ** 2).sum()

    gx, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    th = F.max_pool2d(F.conv2d(tx, tw, None, *conv), *pool)
    (F.avg_pool2d(th, *avg, False, False) ** 2).sum().backward()
    _close(gx, tx.grad)
    _close(gw, tw.grad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_every_function_keeps_the_input_dtype(dtype: type) -> None:
    rng = np.random.default_rng(5)
    x = jax.numpy.asarray(rng.standard_normal((2, 4, 6, 6)), dtype)
    w = jax.numpy.asarray(rng.standard_normal((4, 2, 3, 3)), dtype)
    b = jax.numpy.asarray(rng.standard_normal(4), dtype)

    def pool_and_grad(x: jax.Array, pool: tuple[tuple[int, ...] | bool, ...]) -> list[jax.Array]:
        y, vjp = jax.vjp(lambda x: windows.max_pool(x, *pool), x)
        return [y, *vjp(y)]

    def run(x: jax.Array, w: jax.Array, b: jax.Array) -> list[jax.Array]:
        y, vjp = jax.vjp(lambda x: windows.avg_pool(x, (3, 3), (2, 2), (1, 1), True, False, None), x)
        return [
            windows.conv(x, w, b, (1, 2), (1, 1), (1, 1), 2),
            *pool_and_grad(x, ((2, 2), (2, 2), (0, 0), (1, 1), False)),
            *pool_and_grad(x, ((3, 3), (2, 2), (1, 1), (1, 1), True)),
            y,
            *vjp(y),
        ]

    assert all(out.dtype == dtype for out in jax.jit(run)(x, w, b))


def test_float32_conv_runs_at_full_precision() -> None:
    """float32 convolution agrees with float64 torch to float32 rounding (no reduced-precision matmul passes)."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((2, 16, 12, 12)), rng.standard_normal((8, 16, 3, 3))
    ours = windows.conv(
        jax.numpy.asarray(x, np.float32), jax.numpy.asarray(w, np.float32), None, (1, 1), (1, 1), (1, 1), 1
    )
    ref = F.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)
