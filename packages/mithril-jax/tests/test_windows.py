"""N-d jax convolution and pooling (mithril_jax.windows) against torch, forward and jax.vjp, in float64."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import pytest

from mithril.testing import window_cases
from mithril.testing.window_cases import AVG_CASES, MAX_CASES, AvgCase, ConvCase, MaxCase, torch_pool
from mithril_jax import windows

jax.config.update("jax_enable_x64", True)  # process-wide; the jax backend turns it on for float64 too

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


SLOW_TO_COMPILE = {"1d-plain", "2d-quickstart", "2d-depthwise", "3d-plain"}  # each case costs a jax compile
CONV_CASES = [case for case in window_cases.CONV_CASES if case.name not in SLOW_TO_COMPILE]


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
    ty = torch_pool("max_pool", tx, n, *attrs)
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
    ty = torch_pool("max_pool", tx, len(case.kernel), *attrs)
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
    ty = torch_pool("avg_pool", tx, n, *attrs)
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
