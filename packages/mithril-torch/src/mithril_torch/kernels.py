"""Torch helpers for the ops that need more than one expression; the generated code calls them as `_k.<name>`.

Gradients still come from torch autograd: the helpers are built from differentiable torch
calls, and the updated running statistics, masks and one-hot arrays they return never
require grad.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mithril.models.rules import normalize_axes

from . import frozen

__all__ = ["batch_norm", "dropout_mask", "class_weight", "one_hot", "expand_reduced", "wide_linear"]

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


def dropout_mask(like: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """A mask shaped like `like`, drawn from `generator`: 0 with probability p, else 1/(1-p)."""
    if p == 0.0:
        return torch.ones_like(like)
    if p == 1.0:
        return torch.zeros_like(like)
    keep = 1.0 - p
    return torch.empty_like(like).bernoulli_(keep, generator=generator).div_(keep)


def class_weight(weight: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """The class weights as a tensor of `like`'s dtype and device (built once per dtype and device)."""
    key = (weight, like.dtype, like.device)
    tensor = _WEIGHTS.get(key)
    if tensor is None:
        tensor = _WEIGHTS[key] = torch.tensor(weight, dtype=like.dtype, device=like.device)
    return tensor


def one_hot(indices: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """1.0 at each index along a new last axis; an index outside [0, num_classes) gives zeros (F.one_hot raises)."""
    classes = torch.arange(num_classes, device=indices.device)
    return (indices.unsqueeze(-1) == classes).to(dtype)


def expand_reduced(g: torch.Tensor, like: torch.Tensor, axis: Any, keepdim: bool, scale: bool) -> torch.Tensor:
    """Broadcast a reduction's result back over `like`; divided by the reduced count when `scale`."""
    axes = normalize_axes(axis, like.ndim)
    if not keepdim:
        for a in axes:
            g = g.unsqueeze(a)
    if scale:
        g = g / (math.prod(like.shape[a] for a in axes) or 1)
    return g.expand(like.shape)


def wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for a weight of many more outputs than inputs (a language model's head). A frozen weight on the
    CPU, without autograd, multiplies through its [in, out] copy (`frozen.transposed`): MKL's product with the
    [out, in] layout runs at half the memory bandwidth for a few rows (GPT-2's head: 11.5 ms against 5.9)."""
    plain = not frozen.is_frozen(weight) or type(weight) is not torch.Tensor  # DTensors keep their sharded product
    if plain or weight.device.type != "cpu" or torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    out = torch.matmul(x, frozen.transposed(weight))
    return out if bias is None else out + bias
