"""JAX lowerings of the sequence primitives: arange and jax.nn.dot_product_attention where it applies."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mithril.backend import OpImpl
from mithril.graph import Node

__all__ = ["OPS", "NAMESPACE", "sdpa"]


def arange(node: Node, a: Mapping[str, str]) -> str:
    """jnp.arange: start, end, step, or as many values as `like` has along `dim` (static under jit)."""
    at = node.attrs
    if "like" not in a:
        return f"jnp.arange({at['start']!r}, {at['end']!r}, {at['step']!r})"
    end = f"{at['start']!r} + {at['step']!r} * jnp.shape({a['like']})[{at['dim']!r}]"
    return f"jnp.arange({at['start']!r}, {end}, {at['step']!r})"


def _explicit(q: Any, k: Any, v: Any, mask: Any, is_causal: bool, scale: float, bool_mask: bool) -> Any:
    """softmax(q k^T * scale + masks) v, for the shapes jax.nn.dot_product_attention does not take."""
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * scale
    if is_causal:
        keep = jnp.arange(k.shape[-2])[None, :] <= jnp.arange(q.shape[-2])[:, None]
        scores = jnp.where(keep, scores, -jnp.inf)
    if mask is not None:
        scores = jnp.where(mask != 0, scores, -jnp.inf) if bool_mask else scores + mask
    return jnp.matmul(jax.nn.softmax(scores, axis=-1), v)


def sdpa(
    query: Any, key: Any, value: Any, attn_mask: Any, is_causal: bool, scale: Any, enable_gqa: bool, bool_mask: bool
) -> Any:
    """torch's scaled_dot_product_attention: jax.nn.dot_product_attention for [B, N, L, E] operands, else explicit."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    heads, kv = query.shape[-3] if query.ndim >= 3 else 1, key.shape[-3] if key.ndim >= 3 else 1
    fused = query.ndim == key.ndim == value.ndim == 4 and query.shape[0] == key.shape[0] == value.shape[0]
    fused = fused and key.shape[-1] == value.shape[-1] and (heads == kv or enable_gqa)
    # jax's fused attention loses float64 precision (~1e-7), and its float16 form accumulates in
    # float32 through a dot XLA's CPU backend refuses (F16_F16_F32)
    fused = fused and query.dtype not in (jnp.float64, jnp.float16)
    if not fused:
        if enable_gqa and heads != kv:
            key, value = jnp.repeat(key, heads // kv, axis=-3), jnp.repeat(value, heads // kv, axis=-3)
        return _explicit(query, key, value, attn_mask, is_causal, scale, bool_mask)
    bias = mask = None
    if attn_mask is not None:
        if bool_mask:
            mask = attn_mask != 0
        else:
            bias = attn_mask
    layout = (0, 2, 1, 3)  # jax takes [B, T, N, H]
    out = jax.nn.dot_product_attention(
        jnp.transpose(query, layout),
        jnp.transpose(key, layout),
        jnp.transpose(value, layout),
        bias=bias,
        mask=mask,
        scale=scale,
        is_causal=is_causal,
    )
    return jnp.transpose(out, layout)


def _sdpa(node: Node, a: Mapping[str, str]) -> str:
    at = node.attrs
    args = [a["query"], a["key"], a["value"], a.get("attn_mask", "None")]
    args += [repr(at[k]) for k in ("is_causal", "scale", "enable_gqa", "bool_mask")]
    return f"_attn.sdpa({', '.join(args)})"


OPS: dict[str, OpImpl] = {"arange": arange, "scaled_dot_product_attention": _sdpa}
NAMESPACE: dict[str, Any] = {"_attn": sys.modules[__name__]}
