"""N-d convolution and pooling in torch: dispatch to F.conv{n}d / F.max_pool{n}d / F.avg_pool{n}d.

n, the number of spatial axes, is len(stride) (len(kernel_size) for pools). Pools take any
number of leading axes (torch takes one or two), and torch autograd gives every gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["conv", "max_pool", "avg_pool"]

Ints = tuple[int, ...]


def _functional(name: str, n: int) -> Callable[..., torch.Tensor]:
    """F.{name}{n}d, which torch has for 1 to 3 spatial axes."""
    if n not in (1, 2, 3):
        raise ValueError(f"torch has {name} over 1 to 3 spatial axes, not {n}")
    return getattr(F, f"{name}{n}d")


def _pool(name: str, n: int, x: torch.Tensor, *args: object) -> torch.Tensor:
    """F.{name}{n}d over the last n axes of `x`, through a reshape when `x` is not [N, C, *S] or [C, *S]."""
    fn = _functional(name, n)
    if x.ndim in (n + 1, n + 2):
        return fn(x, *args)
    out = fn(x.reshape(-1, *x.shape[-n:]), *args)
    return out.reshape(*x.shape[:-n], *out.shape[-n:])


def conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> torch.Tensor:
    """torch conv{n}d of [N, C, *S] input with [O, C/groups, *K] weight."""
    return _functional("conv", len(stride))(input, weight, bias, stride, padding, dilation, groups)


def max_pool(
    input: torch.Tensor, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
) -> torch.Tensor:
    """torch max_pool{n}d over the last n axes of an input of any rank."""
    return _pool("max_pool", len(kernel_size), input, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool(
    input: torch.Tensor,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """torch avg_pool{n}d over the last n axes of an input of any rank."""
    n = len(kernel_size)
    if n == 1 and divisor_override is not None:
        # avg_pool1d takes no divisor_override: pool [1, S] planes with avg_pool2d instead.
        (k,), (s,), (p,) = kernel_size, stride, padding
        plane = avg_pool(input.unsqueeze(-2), (1, k), (1, s), (0, p), ceil_mode, count_include_pad, divisor_override)
        return plane.squeeze(-2)
    if n == 1:
        return _pool("avg_pool", n, input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _pool("avg_pool", n, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
