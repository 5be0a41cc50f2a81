"""Torch helpers for the ops that need more than one expression; the generated code calls them as `_k.<name>`.

Gradients still come from torch autograd: every helper is built from differentiable
torch calls, and the values it returns beside the main output (updated running
statistics, the dropout mask) never require grad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["batch_norm", "dropout", "class_weight", "pool_any_rank"]

Pair = tuple[int, int]

_WEIGHTS: dict[tuple[tuple[float, ...], torch.dtype, torch.device], torch.Tensor] = {}


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    momentum: float,
) -> tuple[torch.Tensor, ...]:
    """Training-mode batch norm: (output, new running mean, new running variance); the given stats are untouched."""
    mean, var = running_mean.clone(), running_var.clone()
    return F.batch_norm(x, mean, var, weight, bias, True, momentum, eps), mean, var


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * mask, mask) with a keep mask drawn from `generator` and scaled by 1/(1-p)."""
    if p == 0.0:
        mask = torch.ones_like(x)
    elif p == 1.0:
        mask = torch.zeros_like(x)
    else:
        keep = 1.0 - p
        mask = torch.empty_like(x).bernoulli_(keep, generator=generator).div_(keep)
    return x * mask, mask


def class_weight(weight: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """The class weights as a tensor of `like`'s dtype and device (built once per dtype and device)."""
    key = (weight, like.dtype, like.device)
    tensor = _WEIGHTS.get(key)
    if tensor is None:
        tensor = _WEIGHTS[key] = torch.tensor(weight, dtype=like.dtype, device=like.device)
    return tensor


def pool_any_rank(fn: str, x: torch.Tensor, *args: object) -> torch.Tensor:
    """F.<fn> (a 2-d pool) over the last two axes of an input of any rank >= 2 (torch takes rank 3 or 4 only)."""
    lead: Sequence[int] = x.shape[:-2]
    out = getattr(F, fn)(x.reshape(-1, *x.shape[-2:]), *args)
    return out.reshape(*lead, *out.shape[-2:])
