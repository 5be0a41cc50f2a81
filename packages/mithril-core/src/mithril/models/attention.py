"""Sequence-model layers: Arange, attention, RMSNorm and rotary position embeddings (torch.nn's arguments)."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Init, KeySpec, Model, Operator
from .layers import Linear, Transpose, _check_int

__all__ = [
    "Arange",
    "ScaledDotProductAttention",
    "AttentionHeads",
    "InProjection",
    "MultiheadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "ApplyRotaryEmb",
]

DATA = KeySpec()


def _int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    return value


class Arange(Operator):
    """torch.arange(start, end, step) as int64; with end=None, start + step * i for i below like's size along dim."""

    def __init__(
        self, start: int = 0, end: int | None = None, step: int = 1, dim: int = -1, *, name: str | None = None
    ) -> None:
        attrs: dict[str, int | None] = {"start": _int("Arange", "start", start), "step": _int("Arange", "step", step)}
        if step == 0:
            raise ValueError("Arange: step must not be 0")
        attrs["end"] = None if end is None else _int("Arange", "end", end)
        attrs["dim"] = _int("Arange", "dim", dim)
        inputs = {"like": KeySpec(kind="any")} if end is None else {}
        super().__init__("arange", inputs, attrs=attrs, name=name)


def _scale(owner: str, scale: float | None) -> float | None:
    if scale is not None and not scale > 0:
        raise ValueError(f"{owner}: scale must be None or > 0, got {scale!r}")
    return None if scale is None else float(scale)


def _no_dropout(owner: str, p: float) -> None:
    if p != 0.0:
        raise ValueError(
            f"{owner}: attention dropout (p={p!r}) is not supported; give 0.0 (torch applies none in eval mode)"
        )


class ScaledDotProductAttention(Operator):
    """torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
    enable_gqa) as a layer; attn_mask=True adds the attn_mask input (float: added; bool_mask: nonzero takes part)."""

    def __init__(
        self,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        attn_mask: bool = False,
        bool_mask: bool = False,
        name: str | None = None,
    ) -> None:
        _no_dropout("ScaledDotProductAttention", dropout_p)
        inputs = {"query": DATA, "key": DATA, "value": DATA}
        if attn_mask:
            inputs["attn_mask"] = DATA
        attrs = {
            "is_causal": bool(is_causal),
            "scale": _scale("ScaledDotProductAttention", scale),
            "enable_gqa": bool(enable_gqa),
            "bool_mask": bool(bool_mask),
        }
        super().__init__("scaled_dot_product_attention", inputs, attrs=attrs, name=name)


class AttentionHeads(Operator):
    """Multi-head attention over packed heads: query [..., L, num_heads * E], key/value [..., S, num_kv_heads * E]."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        *,
        attn_mask: bool = False,
        bool_mask: bool = False,
        name: str | None = None,
    ) -> None:
        heads = _check_int("AttentionHeads", "num_heads", num_heads, 1)
        kv = heads if num_kv_heads is None else _check_int("AttentionHeads", "num_kv_heads", num_kv_heads, 1)
        if heads % kv:
            raise ValueError(f"AttentionHeads: num_heads {heads} must be a multiple of num_kv_heads {kv}")
        inputs = {"query": DATA, "key": DATA, "value": DATA}
        if attn_mask:
            inputs["attn_mask"] = DATA
        attrs = {
            "num_heads": heads,
            "num_kv_heads": kv,
            "is_causal": bool(is_causal),
            "scale": _scale("AttentionHeads", scale),
            "bool_mask": bool(bool_mask),
        }
        super().__init__("attention_heads", inputs, attrs=attrs, name=name)


class InProjection(Operator):
    """One of q, k, v (index 0, 1, 2) of torch.nn.MultiheadAttention's packed in_proj_weight [3E, E] and bias [3E]."""

    def __init__(self, embed_dim: int, index: int, bias: bool = True, *, name: str | None = None) -> None:
        e = _check_int("InProjection", "embed_dim", embed_dim, 1)
        if index not in (0, 1, 2):
            raise ValueError(f"InProjection: index must be 0 (query), 1 (key) or 2 (value), got {index!r}")
        inputs = {"input": DATA, "weight": KeySpec("param", init=Init("fan_in_uniform"))}
        if bias:
            inputs["bias"] = KeySpec("param", init=Init("zeros"))
        super().__init__("in_projection", inputs, sizes={"E": e}, attrs={"index": index}, name=name)


class MultiheadAttention(Model):
    """torch.nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, ..., batch_first): inputs query, key, value
    ([L, N, E], or [N, L, E] with batch_first), output the attention output (need_weights=False); parameters
    in_proj_weight [3E, E], in_proj_bias [3E], out_proj.weight, out_proj.bias as torch's."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        is_causal: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        e = _check_int("MultiheadAttention", "embed_dim", embed_dim, 1)
        heads = _check_int("MultiheadAttention", "num_heads", num_heads, 1)
        if e % heads:
            raise ValueError(f"MultiheadAttention: embed_dim {e} must be divisible by num_heads {heads}")
        _no_dropout("MultiheadAttention", dropout)
        if add_bias_kv or add_zero_attn:
            raise ValueError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if kdim not in (None, e) or vdim not in (None, e):
            raise ValueError(f"MultiheadAttention: kdim and vdim must equal embed_dim {e} (packed in_proj_weight)")
        m: Model = self  # composed in place: |= returns the same model
        names = {}
        for index, key in enumerate(("query", "key", "value")):
            source = key
            if not batch_first:
                m |= Transpose(axes=(1, 0, 2))(input=key, output=f"{key}_batch_first")
                source = f"{key}_batch_first"
            proj = {"input": source, "weight": "in_proj_weight", "output": f"{key}_projected"}
            if bias:
                proj["bias"] = "in_proj_bias"
            m |= InProjection(e, index, bias)(**proj)
            names[key] = f"{key}_projected"
        m |= AttentionHeads(heads, is_causal=is_causal)(**names, output="attention")
        m |= Linear(e, bias=bias, name="out_proj")(
            input="attention", output="projected" if not batch_first else "output"
        )
        if not batch_first:
            m |= Transpose(axes=(1, 0, 2))(input="projected", output="output")
        self.canonical_input = "query"


class RMSNorm(Operator):
    """torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True); eps None is the dtype's epsilon."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        name: str | None = None,
    ) -> None:
        dims = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        dims = tuple(_check_int("RMSNorm", "normalized_shape", d, 1) for d in dims)
        inputs: dict[str, KeySpec] = {"input": DATA}
        if elementwise_affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
        attrs = {"normalized_shape": dims, "eps": None if eps is None else float(eps)}
        super().__init__("rms_norm", inputs, attrs=attrs, name=name)


class RotaryEmbedding(Operator):
    """HF Llama's rotary embedding: integer positions [...] -> cos, sin [..., dim] from inverse frequencies of base."""

    def __init__(
        self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0, *, name: str | None = None
    ) -> None:
        d = _check_int("RotaryEmbedding", "dim", dim, 2)
        if d % 2:
            raise ValueError(f"RotaryEmbedding: dim must be even, got {d}")
        count = _check_int("RotaryEmbedding", "max_position_embeddings", max_position_embeddings, 1)
        attrs = {"dim": d, "max_position_embeddings": count, "base": float(base)}
        super().__init__("rotary_embedding", {"input": KeySpec(kind="int")}, attrs=attrs, name=name)


class ApplyRotaryEmb(Operator):
    """HF's apply_rotary_pos_emb for one tensor: input * cos + rotate_half(input) * sin, cos/sin unsqueezed at
    unsqueeze_dim."""

    def __init__(self, unsqueeze_dim: int | None = 1, *, name: str | None = None) -> None:
        if unsqueeze_dim is not None:
            _int("ApplyRotaryEmb", "unsqueeze_dim", unsqueeze_dim)
        super().__init__("apply_rotary_emb", attrs={"unsqueeze_dim": unsqueeze_dim}, name=name)
