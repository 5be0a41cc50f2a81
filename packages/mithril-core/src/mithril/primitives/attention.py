"""Sequence-model primitives: arange, scaled dot-product attention, heads, RMS norm and rotary embeddings."""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedError
from ..graph import Edge
from ..shapes import Dim, Shape, ShapeMismatch, dim_values, resolve, unify
from .builder import Applied, Builder
from .declaration import Attrs, Port, Primitive, Template, declare
from .examples import Example
from .indexing import FULL
from .nn import static_shape

Shapes = dict[str, Shape]


def _dims(edge: Edge, what: str, path: str) -> tuple[int, ...]:
    """Every dimension of `edge`, known at compile time; UnsupportedError otherwise."""
    values = static_shape(edge, what, path)
    if any(v is None for v in values):
        raise UnsupportedError(f"{path}: {what} needs the sizes of its inputs at compile time; give ml.compile shapes=")
    return tuple(int(v) for v in values)  # type: ignore[arg-type]


# -- arange -------------------------------------------------------------------------------------
def arange_length(start: int, end: int, step: int) -> int:
    """len(range(start, end, step)): the size of torch.arange(start, end, step)."""
    return len(range(start, end, step))


def _arange_template(attrs: Attrs) -> Template:
    if attrs["end"] is None:
        return {"like": ["...l"], "output": ["n"]}
    return {"like": ["...l"], "output": [arange_length(attrs["start"], attrs["end"], attrs["step"])]}


def _arange_rule(shapes: Shapes, attrs: Attrs) -> bool:
    """With `like`: as many values as like has along `dim`."""
    if "like" not in shapes or attrs["end"] is not None:
        return True
    items = resolve(shapes["like"].items)
    values = dim_values(items)
    if values is None:
        return False
    dim = attrs["dim"]
    if not -len(values) <= dim < len(values):
        raise ShapeMismatch(f"arange: dim {dim} is out of range for `like` of rank {len(values)}")
    unify(shapes["output"].items, [items[dim]])
    return True


declare(
    Primitive(
        "arange",
        (Port("like", kind="any", differentiable=False, optional=True),),
        _arange_template,
        outputs={"output": "int"},
        attrs={"start": 0, "end": None, "step": 1, "dim": -1},
        rule=_arange_rule,
        core=True,
        doc=(
            "torch.arange(start, end, step) as int64; with `like` (end None): start + step * i for i below "
            "like's size along `dim` (position ids of a sequence)."
        ),
        examples=(
            Example({}, attrs={"start": 1, "end": 8, "step": 2}, grads=False, name="static"),
            Example({"like": (2, 5)}, attrs={"dim": 1, "start": 3}, grads=False, nonfinite=()),
            Example({"like": (None, 4)}, attrs={"dim": -1}, grads=False, name="symbolic", nonfinite=()),
        ),
    )
)


# -- scaled dot-product attention ---------------------------------------------------------------
def _repeat_heads(b: Builder, x: Edge, heads: int, path: str) -> Edge:
    """x [..., Hkv, S, E] with each head repeated heads // Hkv times (torch's repeat_interleave), [..., heads, S, E]."""
    *lead, kv, s, e = _dims(x, "grouped-query attention", path)
    if heads % kv:
        raise UnsupportedError(f"{path}: {heads} query heads cannot be grouped over {kv} key/value heads")
    group = heads // kv
    spread = tuple(1.0 if j == i // group else 0.0 for i in range(heads) for j in range(kv))
    rows = b.reshape(x, shape=(-1, kv, s * e))
    out = b.matmul(b.constant(value=spread, shape=(heads, kv)), rows)
    return b.reshape(out, shape=(*lead, heads, s, e))


def _sdpa(b: Builder, n: Applied) -> dict[str, object]:
    """softmax(q @ k^T * scale + mask) @ v, masks as torch's: causal keeps j <= i, a bool mask keeps nonzero."""
    q, k, v, at = n["query"], n["key"], n["value"], n.attrs
    if at["enable_gqa"]:
        heads = _dims(q, "grouped-query attention", n.path)[-3]
        if _dims(k, "grouped-query attention", n.path)[-3] != heads:
            k, v = _repeat_heads(b, k, heads, n.path), _repeat_heads(b, v, heads, n.path)
    scale = at["scale"]
    if scale is None:
        (e,) = _dims(q, "attention", n.path)[-1:]
        scale = 1.0 / math.sqrt(e)
    scores = b.mul(b.matmul(q, b.swapaxes(k)), b.scalar(scale))
    neg_inf = b.scalar(-math.inf)
    if at["is_causal"]:
        rows = b.reshape(b.arange(q, dim=-2), shape=(-1, 1))
        cols = b.reshape(b.arange(k, dim=-2), shape=(1, -1))
        scores = b.where(b.greater(cols, rows), neg_inf, scores)
    if n.has("attn_mask"):
        mask = n["attn_mask"]
        scores = b.where(mask, scores, neg_inf) if at["bool_mask"] else b.add(scores, mask)
    return {"output": b.matmul(b.softmax(scores, axis=-1), v)}


def _sdpa_rule(shapes: Shapes, attrs: Attrs) -> bool:
    """Key and value share the batch dims; without grouped heads the query's too."""
    if not attrs["enable_gqa"]:
        unify(shapes["key"].items, [*shapes["query"].items[:-2], Dim(), Dim()])
    return True


ATTENTION_PORTS = (Port("query"), Port("key"), Port("value"), Port("attn_mask", optional=True))
# Infinite scores: torch's attention kernels (fused online softmax, or the two-pass math kernel)
# disagree with each other, so the examples that would put them on those paths plant no NaN/Inf.
SDPA_EXAMPLES = (
    Example(
        {"query": (2, 3, 4), "key": (2, 5, 4), "value": (2, 5, 6)}, sweep={"is_causal": (False, True)}, nonfinite=()
    ),
    Example(
        {"query": (2, 2, 3, 4), "key": (2, 2, 3, 4), "value": (2, 2, 3, 4), "attn_mask": (3, 3)},
        attrs={"scale": 0.3},
        name="float_mask",
    ),
    Example(
        {"query": (1, 2, 4, 3), "key": (1, 2, 4, 3), "value": (1, 2, 4, 3), "attn_mask": (1, 4, 4)},
        attrs={"bool_mask": True},
        domain={"attn_mask": "positive"},
        name="bool_mask_all_kept",
        nonfinite=("query", "key", "value"),
    ),
    Example(
        {"query": (2, 4, 3, 2), "key": (2, 2, 5, 2), "value": (2, 2, 5, 3)},
        attrs={"enable_gqa": True, "is_causal": True},
        name="gqa",
        nonfinite=(),
    ),
)
declare(
    Primitive(
        "scaled_dot_product_attention",
        ATTENTION_PORTS,
        {
            "query": ["...", "L", "E"],
            "key": ["...k", "S", "E"],
            "value": ["...k", "S", "Ev"],
            "attn_mask": ["...m"],
            "output": ["...", "L", "Ev"],
        },
        attrs={"is_causal": False, "scale": None, "enable_gqa": False, "bool_mask": False},
        rule=_sdpa_rule,
        decomposition=_sdpa,
        macs=lambda s: 2 * math.prod(s["output"]) * s["key"][-2] * s["query"][-1] // max(s["output"][-1], 1),
        doc=(
            "torch.nn.functional.scaled_dot_product_attention without dropout: query [..., L, E], key [..., S, E], "
            "value [..., S, Ev]; attn_mask added (bool_mask: nonzero takes part), is_causal keeps key j <= query i, "
            "scale (None: 1/sqrt(E)), enable_gqa repeats key/value heads (axis -3) over query head groups."
        ),
        examples=SDPA_EXAMPLES,
    )
)


# -- heads --------------------------------------------------------------------------------------
def _heads_rule(shapes: Shapes, attrs: Attrs) -> bool:
    """The output packs num_heads heads of the value's head size."""
    value = dim_values(resolve(shapes["value"].items))
    if value is None or value[-1] is None:
        return False
    kv = attrs["num_kv_heads"] or attrs["num_heads"]
    if value[-1] % kv:
        raise ShapeMismatch(f"value size {value[-1]} is not a multiple of num_kv_heads {kv}")
    unify(resolve(shapes["output"].items)[-1:], [Dim(value[-1] // kv * attrs["num_heads"])])
    return True


def split_heads(b: Builder, x: Edge, heads: int, path: str) -> Edge:
    """[..., T, heads * D] -> [..., heads, T, D]."""
    *lead, t, width = _dims(x, "attention heads", path)
    if width % heads:
        raise UnsupportedError(f"{path}: size {width} does not split into {heads} heads")
    return b.swapaxes(b.reshape(x, shape=(*lead, t, heads, width // heads)), axis0=-3, axis1=-2)


def merge_heads(b: Builder, x: Edge, path: str) -> Edge:
    """[..., heads, T, D] -> [..., T, heads * D]."""
    *lead, heads, t, d = _dims(x, "attention heads", path)
    return b.reshape(b.swapaxes(x, axis0=-3, axis1=-2), shape=(*lead, t, heads * d))


def _attention_heads(b: Builder, n: Applied) -> dict[str, object]:
    at = n.attrs
    heads, kv = at["num_heads"], at["num_kv_heads"] or at["num_heads"]
    q = split_heads(b, n["query"], heads, n.path)
    k, v = split_heads(b, n["key"], kv, n.path), split_heads(b, n["value"], kv, n.path)
    inputs: dict[str, Edge] = {"query": q, "key": k, "value": v}
    if n.has("attn_mask"):
        inputs["attn_mask"] = n["attn_mask"]
    sdpa = {"is_causal": at["is_causal"], "scale": at["scale"], "enable_gqa": kv != heads, "bool_mask": at["bool_mask"]}
    out = b.emit("scaled_dot_product_attention", inputs, sdpa)["output"]
    return {"output": merge_heads(b, out, n.path)}


declare(
    Primitive(
        "attention_heads",
        ATTENTION_PORTS,
        {
            "query": ["...", "L", "Eq"],
            "key": ["...", "S", "Ek"],
            "value": ["...", "S", "Ev"],
            "attn_mask": ["...m"],
            "output": ["...", "L", "Eo"],
        },
        attrs={"num_heads": 1, "num_kv_heads": None, "is_causal": False, "scale": None, "bool_mask": False},
        rule=_heads_rule,
        decomposition=_attention_heads,
        doc=(
            "Multi-head scaled dot-product attention over packed heads: query [..., L, num_heads * E], key and value "
            "[..., S, num_kv_heads * E(v)] split into heads, attended (masks as scaled_dot_product_attention, "
            "grouped-query when num_kv_heads < num_heads) and packed back to [..., L, num_heads * Ev]."
        ),
        examples=(
            Example({"query": (2, 3, 6), "key": (2, 4, 6), "value": (2, 4, 6)}, attrs={"num_heads": 3}, nonfinite=()),
            Example(
                {"query": (2, 4, 8), "key": (2, 4, 4), "value": (2, 4, 4)},
                attrs={"num_heads": 4, "num_kv_heads": 2, "is_causal": True},
                name="gqa_causal",
                nonfinite=(),
            ),
            Example(
                {"query": (3, 4), "key": (3, 4), "value": (3, 4), "attn_mask": (3, 3)},
                attrs={"num_heads": 2},
                name="unbatched_mask",
            ),
        ),
    )
)


# -- RMS norm -----------------------------------------------------------------------------------
def _rms_template(attrs: Attrs) -> Template:
    dims: list[str | int | None] = list(attrs["normalized_shape"])
    return {"input": ["...", *dims], "weight": dims, "output": ["...", *dims]}


def _rms_norm(b: Builder, n: Applied) -> dict[str, object]:
    """input / sqrt(mean(input**2) + eps) * weight; eps None is the float dtype's machine epsilon, as torch's."""
    x = n["input"]
    axes = tuple(range(-len(n.attrs["normalized_shape"]), 0))
    if n.attrs["eps"] is None:  # |3 * (4/3 - 1) - 1| is the machine epsilon of the precision it is computed in
        third = b.sub(b.div(b.scalar(4.0), b.scalar(3.0)), b.scalar(1.0))
        eps = b.abs(b.sub(b.mul(third, b.scalar(3.0)), b.scalar(1.0)))
    else:
        eps = b.scalar(n.attrs["eps"])
    y = b.div(x, b.sqrt(b.add(b.mean(b.mul(x, x), axis=axes, keepdim=True), eps)))
    return {"output": b.mul(y, n["weight"]) if n.has("weight") else y}


declare(
    Primitive(
        "rms_norm",
        (Port("input"), Port("weight", optional=True)),
        _rms_template,
        attrs={"normalized_shape": (1,), "eps": None},
        decomposition=_rms_norm,
        doc="torch.nn.functional.rms_norm over the last len(normalized_shape) axes (eps None: the dtype's epsilon).",
        examples=(
            Example({"input": (2, 3, 4), "weight": (4,)}, {"normalized_shape": (4,)}, nonfinite=("input",)),
            Example({"input": (None, 2, 3)}, {"normalized_shape": (2, 3), "eps": 1e-3}, name="no_weight", nonfinite=()),
        ),
    )
)


# -- rotary position embeddings -----------------------------------------------------------------
def rotary_tables(dim: int, max_positions: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """HF Llama's cos/sin cache [max_positions, dim], computed in float32 as Hugging Face does."""
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def _rotary_template(attrs: Attrs) -> Template:
    return {"input": ["..."], "cos": ["...", attrs["dim"]], "sin": ["...", attrs["dim"]]}


def _rotary_embedding(b: Builder, n: Applied) -> dict[str, object]:
    dim, count = n.attrs["dim"], n.attrs["max_position_embeddings"]
    cos, sin = rotary_tables(dim, count, n.attrs["base"])
    out: dict[str, object] = {}
    for key, table in (("cos", cos), ("sin", sin)):
        values = tuple(float(v) for v in table.reshape(-1))
        out[key] = b.embedding(n["input"], b.constant(value=values, shape=(count, dim)))
    return out


declare(
    Primitive(
        "rotary_embedding",
        (Port("input", kind="int", index_of=None),),
        _rotary_template,
        outputs={"cos": "float", "sin": "float"},
        attrs={"dim": 2, "max_position_embeddings": 2048, "base": 10000.0},
        decomposition=_rotary_embedding,
        doc=(
            "HF Llama's rotary cos/sin for integer positions [...] -> [..., dim] each, from inverse frequencies "
            "base ** (-2i / dim) (the cache computed in float32, as Hugging Face does)."
        ),
        examples=(Example({"input": (2, 5)}, {"dim": 4, "max_position_embeddings": 8}, ints={"input": 8}),),
    )
)


def _rotate_half(b: Builder, x: Edge, path: str) -> Edge:
    """HF's rotate_half: cat(-x2, x1) of the halves of the last axis (the only size it needs at compile time)."""
    width = static_shape(x, "rotary embedding", path)[-1]
    if width is None:
        raise UnsupportedError(f"{path}: rotary embedding needs the size of its last axis at compile time")
    if width % 2:
        raise UnsupportedError(f"{path}: rotary embeddings need an even last axis, got {width}")
    halves = b.reshape(x, shape=(-1, 2, width // 2))
    turned = b.matmul(b.constant(value=(0.0, -1.0, 1.0, 0.0), shape=(2, 2)), halves)
    return b.reshape_like(turned, x)


def _unsqueezed(b: Builder, t: Edge, axis: int | None) -> Edge:
    """torch.unsqueeze(t, axis) as indexing with None, so the other sizes may be unknown until run time."""
    if axis is None:
        return t
    index = (*(FULL,) * axis, None) if axis >= 0 else ("...", None, *(FULL,) * (-axis - 1))
    return b.slice(t, index=index)


def _apply_rotary(b: Builder, n: Applied) -> dict[str, object]:
    x, axis = n["input"], n.attrs["unsqueeze_dim"]
    cos, sin = _unsqueezed(b, n["cos"], axis), _unsqueezed(b, n["sin"], axis)
    return {"output": b.add(b.mul(x, cos), b.mul(_rotate_half(b, x, n.path), sin))}


declare(
    Primitive(
        "apply_rotary_emb",
        (Port("input"), Port("cos"), Port("sin")),
        {"input": ["...", "D"], "cos": ["...c", "D"], "sin": ["...c", "D"], "output": ["...", "D"]},
        attrs={"unsqueeze_dim": 1},
        decomposition=_apply_rotary,
        doc=(
            "HF's apply_rotary_pos_emb for one tensor: input * cos + rotate_half(input) * sin, cos and sin "
            "unsqueezed at unsqueeze_dim (None: as they are) to broadcast against input."
        ),
        examples=(
            Example({"input": (2, 3, 4, 6), "cos": (2, 4, 6), "sin": (2, 4, 6)}),
            Example({"input": (4, 2, 6), "cos": (4, 1, 6), "sin": (4, 1, 6)}, {"unsqueeze_dim": None}, name="as_is"),
            Example(
                {"input": (2, 4, 3, 6), "cos": (2, 4, 6), "sin": (2, 4, 6)}, {"unsqueeze_dim": -2}, name="from_the_end"
            ),
        ),
    )
)


# -- torch.nn.MultiheadAttention's packed input projection --------------------------------------
def _pick(b: Builder, packed: Edge, index: int, parts: int, path: str) -> Edge:
    """Chunk `index` of `parts` equal chunks of `packed` along axis 0 (a one-hot row times the chunks)."""
    dims = _dims(packed, "in_projection", path)
    rows = b.reshape(packed, shape=(parts, -1))
    chosen = tuple(1.0 if i == index else 0.0 for i in range(parts))
    picked = b.matmul(b.constant(value=chosen, shape=(1, parts)), rows)
    return b.reshape(picked, shape=(dims[0] // parts, *dims[1:]))


def _in_projection(b: Builder, n: Applied) -> dict[str, object]:
    index = n.attrs["index"]
    inputs: dict[str, Edge] = {"input": n["input"], "weight": _pick(b, n["weight"], index, 3, n.path)}
    if n.has("bias"):
        inputs["bias"] = _pick(b, n["bias"], index, 3, n.path)
    return {"output": b.emit("linear", inputs)["output"]}


def _in_projection_rule(shapes: Shapes, attrs: Attrs) -> bool:
    """The packed weight is [3E, E] and the bias [3E]."""
    weight = resolve(shapes["weight"].items)
    size = dim_values(weight[1:])
    if size is None or size[0] is None:
        return False
    unify(weight[:1], [Dim(3 * size[0])])
    if "bias" in shapes:
        unify(shapes["bias"].items, [Dim(3 * size[0])])
    return True


declare(
    Primitive(
        "in_projection",
        (Port("input"), Port("weight"), Port("bias", optional=True)),
        {"input": ["...", "E"], "weight": ["E3", "E"], "bias": ["E3"], "output": ["...", "E"]},
        attrs={"index": 0},
        rule=_in_projection_rule,
        decomposition=_in_projection,
        doc=(
            "torch.nn.MultiheadAttention's projection of chunk `index` (0 query, 1 key, 2 value): input @ "
            "weight[iE:(i+1)E].T + bias[iE:(i+1)E] of the packed in_proj_weight [3E, E] and in_proj_bias [3E]."
        ),
        examples=(
            Example({"input": (2, 3, 4), "weight": (12, 4), "bias": (12,)}, sweep={"index": (0, 2)}),
            Example({"input": (3, 4), "weight": (12, 4)}, {"index": 1}, name="no_bias"),
        ),
    )
)
