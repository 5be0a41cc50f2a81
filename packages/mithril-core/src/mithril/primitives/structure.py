"""Reductions, reshaping, axis permutation and broadcasting, and matrix products."""

from __future__ import annotations

import math

from ..errors import UnsupportedError
from ..models import rules
from ..shapes import dim_values
from .builder import Applied, Builder
from .declaration import VJP, Port, Primitive, declare
from .examples import Example

X = (Port("input"),)
LIKE = (Port("input"), Port("like", differentiable=False))
AS_LIKE = {"input": ["...i"], "like": ["...l"], "output": ["...l"]}
ANY = {"input": ["...i"], "output": ["...o"]}
REDUCE_ATTRS = {"axis": None, "keepdim": False}
REDUCE_EXAMPLES = (
    Example({"input": (3, 4, 2)}, sweep={"axis": (None, 1, (0, -1)), "keepdim": (False, True)}),
    Example({"input": (None, 3, 4)}, sweep={"axis": (None, (0, 2))}, attrs={"keepdim": True}, name="symbolic"),
)
MAX_EXAMPLES = (
    *REDUCE_EXAMPLES,
    Example({"input": (4, 6)}, sweep={"axis": (None, 1)}, domain={"input": "ties"}, smooth=False, name="ties"),
)


def _rank(edge: object) -> int | None:
    values = dim_values(edge.shape.items)  # type: ignore[attr-defined]
    return None if values is None else len(values)


def _expand(scale: bool) -> VJP:
    """sum and mean: the cotangent spread back over the reduced axes (divided by their count for mean)."""

    def vjp(b: Builder, n: Applied) -> dict[str, object]:
        g, x = n.g["output"], n["input"]
        return {"input": b.expand_reduced(g, x, axis=n.attrs["axis"], keepdim=n.attrs["keepdim"], scale=scale)}

    return vjp


def _max_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """Ties share the gradient evenly (torch's amax rule)."""
    axis, keepdim, x = n.attrs["axis"], n.attrs["keepdim"], n["input"]
    mask = b.equal(x, b.expand_reduced(n.output, x, axis=axis, keepdim=keepdim, scale=False))
    share = b.div(n.g["output"], b.sum(mask, axis=axis, keepdim=keepdim))
    return {"input": b.mul(mask, b.expand_reduced(share, x, axis=axis, keepdim=keepdim, scale=False))}


_REDUCTIONS: tuple[tuple[str, VJP, str, tuple[Example, ...]], ...] = (
    ("sum", _expand(False), "Sum over `axis` (all axes when None).", REDUCE_EXAMPLES),
    ("mean", _expand(True), "Mean over `axis` (all axes when None).", REDUCE_EXAMPLES),
    ("max", _max_vjp, "Maximum over `axis`; tied maxima share the gradient.", MAX_EXAMPLES),
)
for _name, _vjp, _doc, _examples in _REDUCTIONS:
    declare(
        Primitive(
            _name,
            X,
            ANY,
            attrs=REDUCE_ATTRS,
            rule=rules.reduce,
            vjp=_vjp,
            core=True,
            doc=_doc,
            examples=_examples,
        )
    )


def _expand_reduced_vjp(b: Builder, n: Applied) -> dict[str, object]:
    reduce = b.mean if n.attrs["scale"] else b.sum
    return {"input": reduce(n.g["output"], axis=n.attrs["axis"], keepdim=n.attrs["keepdim"])}


declare(
    Primitive(
        "expand_reduced",
        LIKE,
        AS_LIKE,
        attrs={**REDUCE_ATTRS, "scale": False},
        vjp=_expand_reduced_vjp,
        core=True,
        doc="Broadcast a reduction's result back over `like`; divided by the reduced count when `scale`.",
        examples=(
            Example(
                {"input": (3, 1, 2), "like": (3, 4, 2)}, {"axis": 1, "keepdim": True}, sweep={"scale": (False, True)}
            ),
            Example({"input": (4,), "like": (3, 4, 2)}, attrs={"axis": (0, 2), "scale": True}, name="dropped_axes"),
            Example({"input": (), "like": (None, 3)}, name="all_symbolic"),
        ),
    )
)
declare(
    Primitive(
        "sum_like",
        LIKE,
        AS_LIKE,
        vjp=lambda b, n: {"input": b.expand_like(n.g["output"], n["input"])},
        core=True,
        doc="Sum `input` down to `like`'s shape, undoing broadcasting.",
        examples=(
            Example({"input": (2, 3, 4), "like": (3, 1)}),
            Example({"input": (None, 3, 4), "like": (1, 4)}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "expand_like",
        LIKE,
        AS_LIKE,
        vjp=lambda b, n: {"input": b.sum_like(n.g["output"], n["input"])},
        core=True,
        doc="Broadcast `input` to `like`'s shape.",
        examples=(
            Example({"input": (3, 1), "like": (2, 3, 4)}),
            Example({"input": (), "like": (None, 3)}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "reshape_like",
        LIKE,
        AS_LIKE,
        vjp=lambda b, n: {"input": b.reshape_like(n.g["output"], n["input"])},
        core=True,
        doc="Reshape `input` to `like`'s shape.",
        examples=(Example({"input": (2, 6), "like": (3, 4)}),),
    )
)
_back_to_input = lambda b, n: {"input": b.reshape_like(n.g["output"], n["input"])}  # noqa: E731
declare(
    Primitive(
        "reshape",
        X,
        ANY,
        attrs={"shape": ()},
        rule=rules.reshape,
        vjp=_back_to_input,
        core=True,
        doc="Reshape to `shape`; one entry may be -1.",
        examples=(
            Example({"input": (2, 3, 2)}, attrs={"shape": (4, -1)}),
            Example({"input": (None, 3, 2)}, attrs={"shape": (-1, 6)}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "flatten",
        X,
        ANY,
        attrs={"start_dim": 1, "end_dim": -1},
        rule=rules.flatten,
        vjp=_back_to_input,
        core=True,
        doc="torch.flatten(input, start_dim, end_dim).",
        examples=(
            Example({"input": (2, 3, 2)}, sweep={"start_dim": (0, 1), "end_dim": (1, -1)}),
            Example({"input": (None, 3, 4)}, name="symbolic"),
        ),
    )
)


def _transpose_vjp(b: Builder, n: Applied) -> dict[str, object]:
    axes = n.attrs["axes"]
    if axes is None:
        return {"input": b.transpose(n.g["output"], axes=None)}
    rank = len(axes)
    order = [ax % rank for ax in axes]
    inverse = tuple(sorted(range(rank), key=lambda i: order[i]))
    return {"input": b.transpose(n.g["output"], axes=inverse)}


declare(
    Primitive(
        "transpose",
        X,
        ANY,
        attrs={"axes": None},
        rule=rules.transpose,
        vjp=_transpose_vjp,
        core=True,
        doc="Permute axes (reversed when `axes` is None), like numpy.transpose.",
        examples=(
            Example({"input": (2, 3, 4)}, sweep={"axes": (None, (1, 2, 0), (0, -1, 1))}),
            Example({"input": (None, 3, 4)}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "swapaxes",
        X,
        ANY,
        attrs={"axis0": -2, "axis1": -1},
        rule=rules.swapaxes,
        vjp=lambda b, n: {"input": b.swapaxes(n.g["output"], axis0=n.attrs["axis0"], axis1=n.attrs["axis1"])},
        core=True,
        doc="Exchange two axes (torch.transpose(input, dim0, dim1)).",
        examples=(
            Example({"input": (2, 3, 4)}),
            Example({"input": (2, 3, 4)}, attrs={"axis0": 0, "axis1": 2}, name="outer"),
        ),
    )
)


def _matmul_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """torch.matmul's gradients; 1-D operands need their rank known at compile time."""
    g, x, y = n.g["output"], n["left"], n["right"]
    rx, ry = _rank(x), _rank(y)
    if rx is None or ry is None:
        raise UnsupportedError(
            f"{n.path}: the gradient of matmul needs the ranks of both operands; give ml.compile shapes="
        )
    out: dict[str, object] = {}
    if ry == 1 and rx == 1:
        return {"left": b.mul(g, y), "right": b.mul(g, x)}
    if ry == 1:  # [..., n, k] @ [k] -> [..., n]
        gcol = b.reshape_like(g, b.sum(x, axis=-1, keepdim=True))
        out["left"] = b.mul(gcol, y)
        out["right"] = b.sum_like(b.mul(gcol, x), y)
    elif rx == 1:  # [k] @ [..., k, m] -> [..., m]
        grow = b.reshape_like(g, b.sum(y, axis=-2, keepdim=True))
        out["left"] = b.sum_like(b.sum(b.mul(y, grow), axis=-1), x)
        out["right"] = b.mul(b.reshape(x, shape=(-1, 1)), grow)
    else:
        out["left"] = b.sum_like(b.matmul(g, b.swapaxes(y)), x)
        out["right"] = b.sum_like(b.matmul(b.swapaxes(x), g), y)
    return {k: v for k, v in out.items() if k in n.wanted}


declare(
    Primitive(
        "matmul",
        (Port("left"), Port("right")),
        {"left": ["...l"], "right": ["...r"], "output": ["...o"]},
        rule=rules.matmul,
        vjp=_matmul_vjp,
        macs=lambda s: math.prod(s["output"]) * s["left"][-1],
        core=True,
        doc="torch.matmul, batch dimensions broadcasting.",
        examples=(
            Example({"left": (3, 4), "right": (4, 2)}),
            Example({"left": (2, 3, 4), "right": (4, 5)}, name="batched_left"),
            Example({"left": (2, 3, 4), "right": (2, 4, 5)}, name="batched"),
            Example({"left": (2, 1, 3, 4), "right": (3, 4, 2)}, name="broadcast_batch"),
            Example({"left": (4,), "right": (2, 4, 3)}, name="vector_batched"),
            Example({"left": (4,), "right": (4, 3)}, name="vector_matrix"),
            Example({"left": (2, 3, 4), "right": (4,)}, name="batched_vector"),
            Example({"left": (4,), "right": (4,)}, name="dot"),
            Example({"left": (None, 3, 4), "right": (4, 2)}, name="symbolic"),
        ),
    )
)


def _linear(b: Builder, n: Applied) -> dict[str, object]:
    y = b.matmul(n["input"], b.transpose(n["weight"], axes=(1, 0)))
    return {"output": b.add(y, n["bias"]) if n.has("bias") else y}


def _linear_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g, x, w = n.g["output"], n["input"], n["weight"]
    out: dict[str, object] = {}
    if "input" in n.wanted:
        out["input"] = b.matmul(g, w)
    if "weight" in n.wanted:
        if _rank(x) == 1:
            out["weight"] = b.mul(b.reshape_like(g, b.sum(w, axis=-1, keepdim=True)), x)
        else:
            out["weight"] = b.sum_like(b.matmul(b.swapaxes(g), x), w)
    if "bias" in n.wanted:
        out["bias"] = b.sum_like(g, n["bias"])
    return out


declare(
    Primitive(
        "linear",
        (Port("input"), Port("weight"), Port("bias", optional=True)),
        {"input": ["...", "in"], "weight": ["out", "in"], "bias": ["out"], "output": ["...", "out"]},
        vjp=_linear_vjp,
        decomposition=_linear,
        macs=lambda s: math.prod(s["output"]) * s["weight"][1],
        doc="input @ weight.T + bias (torch.nn.Linear's layout).",
        examples=(
            Example({"input": (3, 4), "weight": (5, 4), "bias": (5,)}),
            Example({"input": (2, 3, 4), "weight": (5, 4)}, name="3d_nobias"),
            Example({"input": (4,), "weight": (5, 4), "bias": (5,)}, name="vector"),
            Example({"input": (None, 3, 4), "weight": (5, 4), "bias": (5,)}, name="symbolic"),
        ),
    )
)
