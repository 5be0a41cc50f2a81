"""Convolution and pooling cases for the backends' window tests (N-d, torch's arguments), and torch's pools
over any rank as their reference. Pure data but for `torch_pool`, which imports torch when called."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["AVG_CASES", "CONV_CASES", "MAX_CASES", "AvgCase", "ConvCase", "MaxCase", "torch_pool"]


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


def torch_pool(fn: str, x: Any, n: int, *args: Any) -> Any:
    """torch's {fn}{n}d over the last n axes of any rank (through a [-1, *S] reshape); `args` are its own.

    avg_pool1d takes no divisor_override, so a 1-d average pool runs as a 2-d one over [1, S] planes.
    """
    if fn == "avg_pool" and n == 1:
        (k,), (s,), (p,), *rest = args
        return torch_pool(fn, x[..., None, :], 2, (1, k), (1, s), (0, p), *rest)[..., 0, :]
    import torch.nn.functional as F  # noqa: PLC0415, N812 - torch only where a test asks for it

    out = getattr(F, f"{fn}{n}d")(x.reshape(-1, *x.shape[-n:]), *args)
    return out.reshape(*x.shape[:-n], *out.shape[-n:])
