"""Torch lowerings of the indexing primitives: basic indexing with negative steps (torch refuses them) as flips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mithril.codegen import static_shape
from mithril.graph import Node
from mithril.primitives.indexing import positive_index

__all__ = ["slice_", "slice_grad", "emit_slice", "emit_slice_grad"]


def slice_(x: torch.Tensor, index: tuple[Any, ...]) -> torch.Tensor:
    """x[index] with Python's rules, negative steps included."""
    items, flips = positive_index(index, tuple(x.shape))
    y = x[items]
    return torch.flip(y, flips) if flips else y


def slice_grad(g: torch.Tensor, like: torch.Tensor, index: tuple[Any, ...]) -> torch.Tensor:
    """Zeros shaped like `like` holding `g` at like[index]."""
    items, flips = positive_index(index, tuple(like.shape))
    out = g.new_zeros(like.shape)
    out[items] = torch.flip(g, flips) if flips else g
    return out


def emit_slice(node: Node, a: Mapping[str, str]) -> str:
    """x[literal index] (then torch.flip for negative steps) for static shapes, else the run-time helper."""
    shape = static_shape(node.inputs["input"])
    if shape is None or None in shape:
        return f"_ix.slice_({a['input']}, {node.attrs['index']!r})"
    items, flips = positive_index(node.attrs["index"], shape)  # type: ignore[arg-type]
    y = f"{a['input']}[{items!r}]"
    return f"torch.flip({y}, {flips!r})" if flips else y


def emit_slice_grad(node: Node, a: Mapping[str, str]) -> str:
    return f"_ix.slice_grad({a['input']}, {a['like']}, {node.attrs['index']!r})"
