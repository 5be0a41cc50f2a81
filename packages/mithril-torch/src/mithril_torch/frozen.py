"""Frozen tensors (`TorchBackend.frozen`) and what may be derived from them once: a weight promised unchanged
can keep a copy in another layout for as long as it lives."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

__all__ = ["freeze", "is_frozen", "transposed"]

_MARK = "_mithril_frozen"
# [in, out] copies of frozen [out, in] weights, by id of the weight while it lives.
_TRANSPOSED: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}
_LOCK = threading.Lock()


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
    key = id(weight)
    with _LOCK:
        hit = _TRANSPOSED.get(key)
        if hit is not None and hit[0]() is weight:
            return hit[1]
    copy = weight.t().contiguous()

    def forget(_: Any) -> None:
        with _LOCK:
            if key in _TRANSPOSED and _TRANSPOSED[key][0]() is None:
                del _TRANSPOSED[key]

    with _LOCK:
        _TRANSPOSED[key] = (weakref.ref(weight, forget), copy)
    return copy
