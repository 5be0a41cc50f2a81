"""Frozen tensors (`TorchBackend.frozen`) and what may be derived from them once: a weight promised unchanged
can keep a copy in another layout for as long as it lives."""

from __future__ import annotations

from typing import Any

import torch

from mithril.derived import DerivedValues

__all__ = ["freeze", "is_frozen", "transposed"]

_MARK = "_mithril_frozen"
# [in, out] copies of frozen [out, in] weights, while the weights live.
_TRANSPOSED = DerivedValues()


def freeze(tensor: torch.Tensor) -> torch.Tensor:
    """An alias of `tensor` (same memory, no copy, no autograd history) marked as promised unchanged."""
    if is_frozen(tensor):
        return tensor
    alias = tensor.detach()
    setattr(alias, _MARK, True)
    return alias


def is_frozen(tensor: Any) -> bool:
    return getattr(tensor, _MARK, False) is True


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """weight.t() as a contiguous copy, made once per frozen weight and dropped with it."""
    return _TRANSPOSED.get(weight, "transposed", lambda: weight.t().contiguous())
