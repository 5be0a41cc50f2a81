"""N-d torch convolution and pooling (mithril_torch.windows) against torch's own calls on [N, C, *S], in float64.

The references reshape leading axes to [M, 1, *S] (the module under test uses [M, *S]) and run a
1-d average pool with divisor_override as a 3-d one (the module under test uses a 2-d one).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mithril.testing.window_cases import AVG_CASES, CONV_CASES, MAX_CASES, AvgCase, ConvCase, MaxCase
from mithril_torch import windows

RTOL, ATOL = 1e-10, 1e-12


def _reference_pool(fn: str, x: torch.Tensor, n: int, *args: tuple[int, ...] | bool | int | None) -> torch.Tensor:
    """torch's {fn}{n}d over the last n axes, on [M, 1, *S]; a 1-d average pool runs as a 3-d one over [1, 1, S]."""
    if fn == "avg_pool" and n == 1:
        (k,), (s,), (p,), *rest = args
        return _reference_pool(fn, x[..., None, None, :], 3, (1, 1, k), (1, 1, s), (0, 0, p), *rest)[..., 0, 0, :]
    out = getattr(F, f"{fn}{n}d")(x.reshape(-1, 1, *x.shape[-n:]), *args)
    return out.reshape(*x.shape[:-n], *out.shape[-n:])


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def _leaves(*arrays: torch.Tensor) -> list[torch.Tensor]:
    return [a.clone().requires_grad_() for a in arrays]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv_forward_and_grads_match_torch(case: ConvCase) -> None:
    gen = torch.Generator().manual_seed(0)
    n = len(case.kernel)
    x = torch.randn(case.shape, generator=gen, dtype=torch.float64)
    w = torch.randn((case.out_channels, case.shape[1] // case.groups, *case.kernel), generator=gen, dtype=x.dtype)
    b = torch.randn(case.out_channels, generator=gen, dtype=x.dtype)
    attrs = (case.stride, case.padding, case.dilation, case.groups)
    (ox, ow, ob), (rx, rw, rb) = _leaves(x, w, b), _leaves(x, w, b)
    ours = windows.conv(ox, ow, ob if case.bias else None, *attrs)
    ref = getattr(F, f"conv{n}d")(rx, rw, rb if case.bias else None, *attrs)
    _close(ours, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=x.dtype)
    ours.backward(g)
    ref.backward(g)
    _close(ox.grad, rx.grad)
    _close(ow.grad, rw.grad)
    if case.bias:
        _close(ob.grad, rb.grad)


@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: c.name)
def test_max_pool_forward_and_grad_match_torch(case: MaxCase) -> None:
    gen = torch.Generator().manual_seed(1)
    n = len(case.kernel)
    if case.ties:
        x = torch.randint(0, 3, case.shape, generator=gen).to(torch.float64)
    else:
        x = torch.randn(case.shape, generator=gen, dtype=torch.float64)
    attrs = (case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode)
    (ox,), (rx,) = _leaves(x), _leaves(x)
    ours, ref = windows.max_pool(ox, *attrs), _reference_pool("max_pool", rx, n, *attrs)
    _close(ours, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=x.dtype)
    ours.backward(g)
    ref.backward(g)
    _close(ox.grad, rx.grad)


@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: c.name)
def test_avg_pool_forward_and_grad_match_torch(case: AvgCase) -> None:
    gen = torch.Generator().manual_seed(3)
    n = len(case.kernel)
    x = torch.randn(case.shape, generator=gen, dtype=torch.float64)
    attrs = (case.kernel, case.stride, case.padding, case.ceil_mode, case.count_include_pad, case.divisor_override)
    (ox,), (rx,) = _leaves(x), _leaves(x)
    ours, ref = windows.avg_pool(ox, *attrs), _reference_pool("avg_pool", rx, n, *attrs)
    _close(ours, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=x.dtype)
    ours.backward(g)
    ref.backward(g)
    _close(ox.grad, rx.grad)


def test_more_than_three_spatial_axes_is_refused() -> None:
    with pytest.raises(ValueError, match="1 to 3 spatial axes, not 4"):
        windows.max_pool(torch.zeros(1, 2, 2, 2, 2), (2,) * 4, (2,) * 4, (0,) * 4, (1,) * 4, False)
