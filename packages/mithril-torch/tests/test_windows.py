"""N-d torch convolution and pooling (mithril_torch.windows) against torch's own calls on [N, C, *S], in float64.

The references reshape leading axes to [M, 1, *S] (the module under test uses [M, *S]) and run a
1-d average pool with divisor_override as a 3-d one (the module under test uses a 2-d one).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from mithril_torch import windows

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
