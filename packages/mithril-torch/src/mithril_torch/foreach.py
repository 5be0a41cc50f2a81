"""`ml.optim`'s list-wise math on torch tensors: one `torch._foreach_*` kernel call per operation, no per-tensor loop.

Every operation runs under `torch.no_grad()` and returns new tensors (the non-in-place foreach
ops), so updates never record autograd history and never write into their inputs. Scalars are
Python numbers or 0-d tensors (a traced or scheduled learning rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mithril.optim.foreach import Foreach

__all__ = ["TorchForeach"]


def _tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


class TorchForeach(Foreach):
    """`Foreach` on lists of torch tensors of one device."""

    def __repr__(self) -> str:
        return "TorchForeach()"

    @torch.no_grad()
    def add(self, xs: Sequence[Any], other: Any, alpha: Any = 1.0) -> list[Any]:
        xs = list(xs)
        if isinstance(other, (list, tuple)):
            if _tensor(alpha):
                return list(torch._foreach_add(xs, torch._foreach_mul(list(other), alpha)))
            return list(torch._foreach_add(xs, list(other), alpha=alpha))
        if _tensor(other) or _tensor(alpha):
            return list(torch._foreach_add(xs, torch.as_tensor(other * alpha, device=xs[0].device if xs else None)))
        return list(torch._foreach_add(xs, other * alpha))

    @torch.no_grad()
    def mul(self, xs: Sequence[Any], other: Any) -> list[Any]:
        return list(torch._foreach_mul(list(xs), list(other) if isinstance(other, (list, tuple)) else other))

    @torch.no_grad()
    def div(self, xs: Sequence[Any], other: Any) -> list[Any]:
        return list(torch._foreach_div(list(xs), list(other) if isinstance(other, (list, tuple)) else other))

    @torch.no_grad()
    def sqrt(self, xs: Sequence[Any]) -> list[Any]:
        return list(torch._foreach_sqrt(list(xs)))

    @torch.no_grad()
    def maximum(self, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        return list(torch._foreach_maximum(list(xs), list(ys)))

    @torch.no_grad()
    def addcmul(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        if _tensor(value):
            return list(torch._foreach_add(list(xs), torch._foreach_mul(torch._foreach_mul(list(ys), value), list(zs))))
        return list(torch._foreach_addcmul(list(xs), list(ys), list(zs), value=value))

    @torch.no_grad()
    def addcdiv(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        if _tensor(value):
            return list(torch._foreach_add(list(xs), torch._foreach_div(torch._foreach_mul(list(ys), value), list(zs))))
        return list(torch._foreach_addcdiv(list(xs), list(ys), list(zs), value=value))

    @torch.no_grad()
    def lerp(self, xs: Sequence[Any], ys: Sequence[Any], weight: float) -> list[Any]:
        return list(torch._foreach_lerp(list(xs), list(ys), weight))

    @torch.no_grad()
    def zeros_like(self, xs: Sequence[Any]) -> list[Any]:
        return [torch.zeros_like(x, memory_format=torch.preserve_format) for x in xs]

    @torch.no_grad()
    def where(self, cond: Any, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        if _tensor(cond):
            return [torch.where(cond, x, y) for x, y in zip(xs, ys)]
        return list(xs if bool(cond) else ys)

    @torch.no_grad()
    def global_norm(self, xs: Sequence[Any]) -> Any:
        if not xs:
            return torch.tensor(0.0)
        return torch.linalg.vector_norm(torch.stack(list(torch._foreach_norm(list(xs), 2.0))), 2.0)

    @torch.no_grad()
    def clamp_max(self, scalar: Any, maximum: float) -> Any:
        return torch.clamp(scalar, max=maximum)

    def scalar(self, value: Any, like: Any) -> Any:
        if not _tensor(value):
            return value
        return value.to(dtype=like.dtype, device=like.device)
