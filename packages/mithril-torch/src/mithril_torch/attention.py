"""Torch lowerings of the sequence primitives: arange and fused scaled dot-product attention."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mithril.backend import OpImpl
from mithril.graph import Node

__all__ = ["OPS", "NAMESPACE", "sdpa"]


def arange(node: Node, a: Mapping[str, str]) -> str:
    """torch.arange on the device of `like` (of the backend's generator without one)."""
    at = node.attrs
    if "like" not in a:
        return f"torch.arange({at['start']!r}, {at['end']!r}, {at['step']!r}, device=_generator.device)"
    like = a["like"]
    end = f"{at['start']!r} + {at['step']!r} * {like}.shape[{at['dim']!r}]"
    return f"torch.arange({at['start']!r}, {end}, {at['step']!r}, device={like}.device)"


def sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    bool_mask: bool,
) -> torch.Tensor:
    """F.scaled_dot_product_attention; a causal mask given together with attn_mask is folded into it."""
    mask = None if attn_mask is None else (attn_mask != 0) if bool_mask else attn_mask
    if mask is not None and is_causal:
        size = (query.shape[-2], key.shape[-2])
        causal = torch.ones(size, dtype=torch.bool, device=query.device).tril()
        if mask.dtype == torch.bool:
            mask = mask & causal
        else:
            mask = mask.masked_fill(~causal, float("-inf"))
        is_causal = False
    return F.scaled_dot_product_attention(query, key, value, mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)


def _sdpa(node: Node, a: Mapping[str, str]) -> str:
    at = node.attrs
    args = [a["query"], a["key"], a["value"], a.get("attn_mask", "None")]
    args += [repr(at[k]) for k in ("is_causal", "scale", "enable_gqa", "bool_mask")]
    return f"_attn.sdpa({', '.join(args)})"


def _rms_norm(node: Node, a: Mapping[str, str]) -> str:
    at = node.attrs
    return f"F.rms_norm({a['input']}, {tuple(at['normalized_shape'])!r}, {a.get('weight', 'None')}, {at['eps']!r})"


OPS: dict[str, OpImpl] = {
    "arange": arange,
    "scaled_dot_product_attention": _sdpa,
    "rms_norm": _rms_norm,
}
NAMESPACE: dict[str, Any] = {"_attn": sys.modules[__name__]}
