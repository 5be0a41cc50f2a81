"""Gradient clipping by global norm, with torch.nn.utils.clip_grad_norm_'s numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import check_number
from .foreach import Foreach

__all__ = ["clip_grad_norm", "global_norm"]

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
CLIP_EPS = 1e-6


def global_norm(grads: Mapping[str, Any], ops: Foreach) -> Any:
    """The 2-norm of all gradients together, as a 0-d array (what clipping compares with max_norm)."""
    return ops.global_norm(list(grads.values()))


def clip_grad_norm(grads: Mapping[str, Any], max_norm: float, ops: Foreach) -> dict[str, Any]:
    """New gradients scaled by min(1, max_norm / (norm + 1e-6)), norm the global 2-norm (torch's clip_grad_norm_).

    Like torch, every gradient is multiplied by the clamped coefficient (by 1.0 when the norm is
    within max_norm), so the step stays one traced program without a branch on the norm.
    """
    max_norm = check_number("ml.optim.clip_grad_norm", "max_norm", max_norm)
    keys = list(grads)
    if not keys:
        return {}
    arrays = [grads[key] for key in keys]
    coefficient = ops.clamp_max(max_norm / (ops.global_norm(arrays) + CLIP_EPS), 1.0)
    return dict(zip(keys, ops.mul(arrays, coefficient)))
