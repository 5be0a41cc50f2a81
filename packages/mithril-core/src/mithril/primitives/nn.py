"""Neural-network primitives: softmax family, normalisation, dropout, embeddings and losses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import DTypeMismatchError, ShapeError, UnsupportedError
from ..models import rules
from ..shapes import Dim, Item, Shape, ShapeMismatch, Transaction, dim_values, render, resolve, unify
from .builder import Applied, Builder
from .declaration import Attrs, Port, Primitive, Template, declare
from .examples import Example, dropout_mask_statistics, dropout_statistics

if TYPE_CHECKING:
    from ..graph import Node

X = (Port("input"),)
ANY = {"input": ["...i"], "output": ["...o"]}


def static_shape(edge: object, what: str, path: str) -> tuple[int | None, ...]:
    """The edge's dims (None where symbolic); UnsupportedError when even its rank is unknown."""
    values = dim_values(edge.shape.items)  # type: ignore[attr-defined]
    if values is None:
        raise UnsupportedError(f"{path}: {what} needs the rank of its input at compile time; give ml.compile shapes=")
    return values


def _static_dims(edge: object, axes: range | tuple[int, ...], what: str, path: str) -> tuple[int, ...]:
    values = static_shape(edge, what, path)
    picked = [values[a] for a in axes]
    if any(v is None for v in picked):
        raise UnsupportedError(
            f"{path}: {what} needs sizes {[a for a in axes]} of its input at compile time; give ml.compile shapes="
        )
    return tuple(int(v) for v in picked)  # type: ignore[arg-type]


# -- softmax family -----------------------------------------------------------------------------
def _softmax(b: Builder, n: Applied) -> dict[str, object]:
    axis, x = n.attrs["axis"], n["input"]
    e = b.exp(b.sub(x, b.max(x, axis=axis, keepdim=True)))
    return {"output": b.div(e, b.sum(e, axis=axis, keepdim=True))}


def _softmax_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g, y, axis = n.g["output"], n.output, n.attrs["axis"]
    return {"input": b.mul(y, b.sub(g, b.sum(b.mul(g, y), axis=axis, keepdim=True)))}


def _log_softmax(b: Builder, n: Applied) -> dict[str, object]:
    axis, x = n.attrs["axis"], n["input"]
    shifted = b.sub(x, b.max(x, axis=axis, keepdim=True))
    return {"output": b.sub(shifted, b.log(b.sum(b.exp(shifted), axis=axis, keepdim=True)))}


def _log_softmax_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g, axis = n.g["output"], n.attrs["axis"]
    return {"input": b.sub(g, b.mul(b.exp(n.output), b.sum(g, axis=axis, keepdim=True)))}


for _name, _fn, _vjp, _doc in (
    ("softmax", _softmax, _softmax_vjp, "torch.softmax(input, dim=axis)."),
    ("log_softmax", _log_softmax, _log_softmax_vjp, "torch.log_softmax(input, dim=axis)."),
):
    declare(
        Primitive(
            _name,
            X,
            ANY,
            attrs={"axis": -1},
            rule=rules.same_shape_axis,
            vjp=_vjp,
            decomposition=_fn,
            doc=_doc,
            examples=(
                Example({"input": (3, 4)}, sweep={"axis": (0, -1)}),
                Example({"input": (2, 3, 4)}, {"axis": 1}, name="3d"),
            ),
        )
    )


# -- normalisation ------------------------------------------------------------------------------
def _normalize(b: Builder, x: object, axes: tuple[int, ...], eps: float) -> object:
    centred = b.sub(x, b.mean(x, axis=axes, keepdim=True))
    var = b.mean(b.mul(centred, centred), axis=axes, keepdim=True)
    return b.div(centred, b.sqrt(b.add(var, b.scalar(eps))))


def _affine(b: Builder, n: Applied, y: object, shape: tuple[int, ...] | None) -> object:
    """y * weight + bias, the parameters reshaped to `shape` (None: they broadcast as they are)."""
    for key, op in (("weight", b.mul), ("bias", b.add)):
        if n.has(key):
            param = n[key] if shape is None else b.reshape(n[key], shape=shape)
            y = op(y, param)
    return y


def _layer_norm_template(attrs: Attrs) -> Template:
    dims: list[str | int | None] = list(attrs["normalized_shape"])
    return {"input": ["...", *dims], "weight": dims, "bias": dims, "output": ["...", *dims]}


def _layer_norm(b: Builder, n: Applied) -> dict[str, object]:
    axes = tuple(range(-len(n.attrs["normalized_shape"]), 0))
    return {"output": _affine(b, n, _normalize(b, n["input"], axes, n.attrs["eps"]), None)}


AFFINE = (Port("input"), Port("weight", optional=True), Port("bias", optional=True))
# Norms get NaN and ±inf in their input only: torch's fused kernels make an infinite weight or
# running statistic NaN or ±inf depending on the kernel (see Example.nonfinite).
INPUT_ONLY = ("input",)
declare(
    Primitive(
        "layer_norm",
        AFFINE,
        _layer_norm_template,
        attrs={"normalized_shape": (1,), "eps": 1e-5},
        decomposition=_layer_norm,
        doc="torch.nn.functional.layer_norm over the last len(normalized_shape) axes.",
        examples=(
            Example(
                {"input": (2, 3, 4), "weight": (3, 4), "bias": (3, 4)},
                {"normalized_shape": (3, 4)},
                nonfinite=INPUT_ONLY,
            ),
            Example(
                {"input": (None, 5), "weight": (5,)},
                {"normalized_shape": (5,)},
                name="symbolic_nobias",
                nonfinite=INPUT_ONLY,
            ),
        ),
    )
)

CHANNELS: Template = {"input": ["N", "C", "...s"], "weight": ["C"], "bias": ["C"], "output": ["N", "C", "...s"]}


def _group_norm(b: Builder, n: Applied) -> dict[str, object]:
    x, groups = n["input"], n.attrs["num_groups"]
    rank = len(static_shape(x, "GroupNorm", n.path))
    channels, *spatial = _static_dims(x, tuple(range(1, rank)), "GroupNorm", n.path)
    grouped = b.reshape(x, shape=(-1, channels // groups, *spatial))
    y = b.reshape_like(_normalize(b, grouped, tuple(range(1, rank)), n.attrs["eps"]), x)
    return {"output": _affine(b, n, y, (channels, *[1] * (rank - 2)))}


declare(
    Primitive(
        "group_norm",
        AFFINE,
        CHANNELS,
        attrs={"num_groups": 1, "eps": 1e-5},
        decomposition=_group_norm,
        doc="torch.nn.functional.group_norm over [N, C, *spatial].",
        examples=(
            Example({"input": (2, 4, 3), "weight": (4,), "bias": (4,)}, {"num_groups": 2}, nonfinite=INPUT_ONLY),
            Example({"input": (2, 6, 2, 2)}, {"num_groups": 3}, name="2d_no_affine", nonfinite=INPUT_ONLY),
        ),
    )
)


def _channel_shape(b: Builder, n: Applied, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(reduced axes, per-channel parameter shape) of a batch-norm input."""
    rank = len(static_shape(n["input"], what, n.path))
    (channels,) = _static_dims(n["input"], (1,), what, n.path)
    return (0, *range(2, rank)), (channels, *[1] * (rank - 2))


def _batch_norm(b: Builder, n: Applied) -> dict[str, object]:
    x, eps, momentum = n["input"], n.attrs["eps"], n.attrs["momentum"]
    axes, shape = _channel_shape(b, n, "BatchNorm")
    mean = b.mean(x, axis=axes, keepdim=True)
    centred = b.sub(x, mean)
    var = b.mean(b.mul(centred, centred), axis=axes, keepdim=True)
    y = b.div(centred, b.sqrt(b.add(var, b.scalar(eps))))
    out: dict[str, object] = {"output": _affine(b, n, y, shape)}
    if n.has("running_mean"):
        sizes = static_shape(x, "BatchNorm", n.path)
        reduced = [sizes[a] for a in axes]
        if all(s is not None for s in reduced):
            count: object = b.scalar(float(math.prod(reduced)))  # type: ignore[arg-type]
        else:
            count = b.sum(b.expand_like(b.scalar(1.0), x), axis=axes, keepdim=True)
        unbiased = b.div(b.mul(var, count), b.maximum(b.sub(count, b.scalar(1.0)), b.scalar(1.0)))
        keep = b.scalar(1.0 - momentum)
        for key, stat in (("running_mean", mean), ("running_var", unbiased)):
            fresh = b.mul(b.scalar(momentum), b.reshape_like(stat, n[key]))
            out[key + "_out"] = b.add(b.mul(keep, n[key]), fresh)
    return out


def _batch_norm_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """Gradients of training-mode batch norm (batch statistics), written with means so the count stays implicit."""
    g, x = n.g["output"], n["input"]
    axes, shape = _channel_shape(b, n, "BatchNorm")
    centred = b.sub(x, b.mean(x, axis=axes, keepdim=True))
    inv = b.div(
        b.scalar(1.0), b.sqrt(b.add(b.mean(b.mul(centred, centred), axis=axes, keepdim=True), b.scalar(n.attrs["eps"])))
    )
    xhat = b.mul(centred, inv)
    out: dict[str, object] = {}
    if "weight" in n.wanted:
        out["weight"] = b.reshape_like(b.sum(b.mul(g, xhat), axis=axes, keepdim=True), n["weight"])
    if "bias" in n.wanted:
        out["bias"] = b.reshape_like(b.sum(g, axis=axes, keepdim=True), n["bias"])
    if "input" in n.wanted:
        dxhat = b.mul(g, b.reshape(n["weight"], shape=shape)) if n.has("weight") else g
        mean_d = b.mean(dxhat, axis=axes, keepdim=True)
        mean_dx = b.mean(b.mul(dxhat, xhat), axis=axes, keepdim=True)
        out["input"] = b.mul(inv, b.sub(b.sub(dxhat, mean_d), b.mul(xhat, mean_dx)))
    return out


STATS = (
    Port("running_mean", differentiable=False, optional=True),
    Port("running_var", differentiable=False, optional=True),
)
POSITIVE_VAR = {"running_var": "positive"}
declare(
    Primitive(
        "batch_norm",
        (*AFFINE, *STATS),
        {**CHANNELS, "running_mean": ["C"], "running_var": ["C"], "running_mean_out": ["C"], "running_var_out": ["C"]},
        outputs={"output": "float", "running_mean_out": "float", "running_var_out": "float"},
        attrs={"eps": 1e-5, "momentum": 0.1},
        vjp=_batch_norm_vjp,
        decomposition=_batch_norm,
        inference="batch_norm_inference",
        state_updates={"running_mean_out": "running_mean", "running_var_out": "running_var"},
        doc="Training-mode batch norm over [N, C, *spatial], updating the running statistics.",
        examples=(
            Example(
                {"input": (4, 3, 2, 2), "weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,)},
                {"momentum": 0.2},
                domain=POSITIVE_VAR,
                nonfinite=INPUT_ONLY,
            ),
            Example({"input": (4, 3, 2, 2)}, name="no_affine_no_stats", nonfinite=INPUT_ONLY),
            Example(
                {"input": (4, 3), "running_mean": (3,), "running_var": (3,)},
                domain=POSITIVE_VAR,
                name="1d",
                nonfinite=INPUT_ONLY,
            ),
            Example(
                {"input": (None, 3, 2), "weight": (3,), "running_mean": (3,), "running_var": (3,)},
                domain=POSITIVE_VAR,
                name="symbolic",
                nonfinite=INPUT_ONLY,
            ),
        ),
    )
)


def _batch_norm_inference(b: Builder, n: Applied) -> dict[str, object]:
    _, shape = _channel_shape(b, n, "BatchNorm")
    mean, var = b.reshape(n["running_mean"], shape=shape), b.reshape(n["running_var"], shape=shape)
    y = b.div(b.sub(n["input"], mean), b.sqrt(b.add(var, b.scalar(n.attrs["eps"]))))
    return {"output": _affine(b, n, y, shape)}


declare(
    Primitive(
        "batch_norm_inference",
        (*AFFINE, Port("running_mean", differentiable=False), Port("running_var", differentiable=False)),
        {**CHANNELS, "running_mean": ["C"], "running_var": ["C"]},
        attrs={"eps": 1e-5, "momentum": 0.1},
        decomposition=_batch_norm_inference,
        doc="Batch norm with the running statistics (inference form of batch_norm).",
        examples=(
            Example(
                {"input": (4, 3, 2, 2), "weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,)},
                domain=POSITIVE_VAR,
                nonfinite=INPUT_ONLY,
            ),
            Example(
                {"input": (None, 3), "running_mean": (3,), "running_var": (3,)},
                domain=POSITIVE_VAR,
                name="symbolic",
                nonfinite=INPUT_ONLY,
            ),
        ),
    )
)

# -- dropout ------------------------------------------------------------------------------------
declare(
    Primitive(
        "dropout_mask",
        (Port("like", differentiable=False),),
        {"like": ["..."], "output": ["..."]},
        attrs={"p": 0.5},
        random=True,
        core=True,
        doc="Random mask shaped like `like`: 0 with probability p, else 1/(1-p).",
        examples=(Example({"like": (64, 64)}, sweep={"p": (0.0, 0.25, 0.5)}, statistic=dropout_mask_statistics),),
    )
)


def _dropout(b: Builder, n: Applied) -> dict[str, object]:
    mask = b.dropout_mask(n["input"], p=n.attrs["p"])
    return {"output": b.mul(n["input"], mask), "mask": mask}


declare(
    Primitive(
        "dropout",
        X,
        {"input": ["..."], "output": ["..."], "mask": ["..."]},
        outputs={"output": "float", "mask": "float"},
        attrs={"p": 0.5},
        vjp=lambda b, n: {"input": b.mul(n.g["output"], n.outputs["mask"])},
        decomposition=_dropout,
        inference="identity",
        random=True,
        doc="torch.nn.functional.dropout in training mode; the scaled mask is a second output.",
        examples=(Example({"input": (64, 64)}, sweep={"p": (0.0, 0.5)}, statistic=dropout_statistics),),
    )
)

# -- indices ------------------------------------------------------------------------------------
declare(
    Primitive(
        "embedding",
        (Port("input", kind="int", index_of=("weight", 0)), Port("weight")),
        {"input": ["..."], "weight": ["V", "D"], "output": ["...", "D"]},
        vjp=lambda b, n: {"weight": b.embedding_grad(n.g["output"], n["input"], n["weight"])},
        core=True,
        doc="Rows of `weight` picked by integer `input`.",
        examples=(
            Example({"input": (2, 5), "weight": (7, 3)}, ints={"input": 7}),
            Example({"input": (None, 4), "weight": (3, 2)}, ints={"input": 3}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "embedding_grad",
        (Port("input"), Port("indices", kind="int"), Port("like", differentiable=False)),
        {"input": ["...g"], "indices": ["...i"], "like": ["...l"], "output": ["...l"]},
        core=True,
        doc="Rows of the output gradient added, at `indices`, into zeros shaped like the weight.",
        examples=(Example({"input": (2, 5, 3), "indices": (2, 5), "like": (4, 3)}, ints={"indices": 4}, grads=False),),
    )
)
declare(
    Primitive(
        "one_hot",
        (Port("input", kind="int"),),
        lambda a: {"input": ["..."], "output": ["...", a["num_classes"]]},
        attrs={"num_classes": 1},
        core=True,
        doc="1.0 at each index along a new last axis of size num_classes; indices outside [0, num_classes) give zeros.",
        examples=(Example({"input": (3, 5)}, {"num_classes": 4}, ints={"input": (-1, 6)}),),
    )
)


# -- losses -------------------------------------------------------------------------------------
def _reduce(b: Builder, loss: object, reduction: str) -> object:
    if reduction == "none":
        return loss
    return b.sum(loss) if reduction == "sum" else b.mean(loss)


REDUCTIONS = ("mean", "sum", "none")


def _mse(b: Builder, n: Applied) -> dict[str, object]:
    diff = b.sub(n["input"], n["target"])
    return {"output": _reduce(b, b.mul(diff, diff), n.attrs["reduction"])}


declare(
    Primitive(
        "mse_loss",
        (Port("input"), Port("target")),
        lambda a: {"input": ["..."], "target": ["..."], "output": ["..."] if a["reduction"] == "none" else []},
        attrs={"reduction": "mean"},
        decomposition=_mse,
        doc="torch.nn.functional.mse_loss.",
        examples=(Example({"input": (3, 4), "target": (3, 4)}, sweep={"reduction": REDUCTIONS}),),
    )
)


def _ce_ranks(shapes: dict[str, Shape]) -> tuple[int | None, int | None]:
    """The ranks of the logits and the target (None while unknown)."""
    ranks = [dim_values(shapes[k].items) for k in ("input", "target")]
    return (None if ranks[0] is None else len(ranks[0])), (None if ranks[1] is None else len(ranks[1]))


def _ce_reduced(items: list[Item]) -> list[Item]:
    """The logits' shape without the class axis: [N, C, d...] -> [N, d...], [C] -> []."""
    return [items[0], *items[2:]] if len(items) >= 2 else []


def _cross_entropy_shapes(shapes: dict[str, Shape], attrs: Attrs) -> bool:
    """Logits [C], [N, C] or [N, C, d...]; the target holds class indices (the logits' shape without
    the class axis) or class probabilities (the logits' shape), told apart by rank as torch does."""
    rank, target_rank = _ce_ranks(shapes)
    if rank is None:
        return False
    logits = resolve(shapes["input"].items)
    if rank == 0:
        raise ShapeMismatch("the logits need a class axis: [C], [N, C] or [N, C, d1, ...], got a scalar")
    if attrs["weight"] is not None:
        unify([logits[1 if rank >= 2 else 0]], [Dim(len(attrs["weight"]))])
    reduced = _ce_reduced(logits)
    if attrs["reduction"] == "none":
        unify(shapes["output"].items, reduced)
    if target_rank is None:
        return False
    if target_rank == rank:
        unify(shapes["target"].items, logits)
    elif target_rank == rank - 1:
        unify(shapes["target"].items, reduced)
    else:
        raise ShapeMismatch(
            f"a target of rank {target_rank} fits logits of rank {rank} neither as class indices "
            f"(rank {rank - 1}) nor as class probabilities (rank {rank})"
        )
    return True


def _cross_entropy_settle(node: Node) -> None:
    """Decide what the target holds once ml.compile has applied its shapes.

    A target whose rank is still open takes its form from its kind: float values are class
    probabilities (the logits' shape), anything else class indices. A target of the logits'
    rank holds probabilities and must be float; one rank lower, indices, and must be int.
    """
    x, t = node.inputs["input"], node.inputs["target"]
    shapes = {"input": x.shape, "target": t.shape}
    rank, target_rank = _ce_ranks(shapes)
    if rank is None:
        return  # the decomposition asks for the rank
    if target_rank is None:
        logits = resolve(x.shape.items)
        with Transaction() as tx:
            try:
                unify(t.shape.items, logits if t.kind == "float" else _ce_reduced(logits))
                tx.propagate()
            except ShapeMismatch as exc:
                raise ShapeError(f"CrossEntropyLoss {node.path!r}: target {t.name!r}: {exc}") from None
        target_rank = rank if t.kind == "float" else rank - 1
    kind = "float" if target_rank == rank else "int"
    if t.kind not in ("any", kind):
        form = "class probabilities" if kind == "float" else "class indices"
        raise DTypeMismatchError(
            f"CrossEntropyLoss {node.path!r}: target {t.name!r} of shape {render(t.shape.items)} against logits "
            f"{render(x.shape.items)} holds {form}, which must be {kind} values, but it carries {t.kind} values"
        )
    t.kind = kind


def _class_column(b: Builder, values: tuple[float, ...], rank: int) -> object:
    """A constant over the class axis of rank-`rank` logits [N, C, d...]: shape [C, 1, ...]."""
    return b.reshape(b.constant(value=values, shape=(len(values),)), shape=(len(values), *[1] * (rank - 2)))


def _cross_entropy(b: Builder, n: Applied) -> dict[str, object]:
    """torch's cross_entropy, written so that -inf log-probabilities of classes the target does not
    pick (extreme logits) never meet a zero coefficient: they are selected away, not multiplied."""
    x, t, attrs = n["input"], n["target"], n.attrs
    rank = len(static_shape(x, "CrossEntropyLoss", n.path))
    probabilities = len(static_shape(t, "CrossEntropyLoss", n.path)) == rank
    (classes,) = _static_dims(x, (1 if rank >= 2 else 0,), "CrossEntropyLoss", n.path)
    onehot = None if probabilities else b.one_hot(t, num_classes=classes)  # int inputs feed one_hot only (GGML)
    if rank == 1:  # [C] is one row of [1, C]; the loss of the row is the result
        x = b.reshape(x, shape=(1, classes))
        if probabilities:
            t = b.reshape(t, shape=(1, classes))
        else:
            onehot = b.reshape(onehot, shape=(1, classes))
    full = max(rank, 2)
    logp = b.log_softmax(x, axis=1)
    weight, smoothing, reduction = attrs["weight"], attrs["label_smoothing"], attrs["reduction"]
    class_weight = None if weight is None else _class_column(b, tuple(weight), full)
    if probabilities:  # torch: -(logp * target * weight).sum(class axis), the mean over all but the class axis
        if smoothing:
            t = b.add(b.mul(t, b.scalar(1.0 - smoothing)), b.scalar(smoothing / classes))
        terms = b.mul(logp, t) if class_weight is None else b.mul(b.mul(logp, t), class_weight)
        loss = b.neg(b.sum(terms, axis=1))
        if reduction == "mean":
            loss = b.mean(loss)
    else:
        assert onehot is not None
        if full > 2:
            onehot = b.transpose(onehot, axes=(0, full - 1, *range(1, full - 1)))
        if 0 <= attrs["ignore_index"] < classes:
            marker = tuple(float(c != attrs["ignore_index"]) for c in range(classes))
            onehot = b.mul(onehot, _class_column(b, marker, full))
        weighted = onehot if class_weight is None else b.mul(onehot, class_weight)
        target_weight = b.sum(weighted, axis=1)
        zero = b.scalar(0.0)
        loss = b.neg(b.sum(b.mul(b.where(onehot, logp, zero), weighted), axis=1))
        if smoothing:
            valid = b.sum(onehot, axis=1)
            smooth_terms = logp if class_weight is None else b.mul(logp, class_weight)
            smooth = b.where(valid, b.neg(b.sum(smooth_terms, axis=1)), zero)
            loss = b.add(b.mul(b.scalar(1.0 - smoothing), loss), b.mul(b.scalar(smoothing / classes), smooth))
        if reduction == "mean":
            loss = b.div(b.sum(loss), b.sum(target_weight))
    if reduction == "sum":
        loss = b.sum(loss)
    elif reduction == "none" and rank == 1:
        loss = b.reshape(loss, shape=())
    return {"output": loss}


def _cross_entropy_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """The logits' cotangent as torch computes it, (softmax * sum(q) - q) times each loss's cotangent, where q
    holds each class's coefficient in the loss: fewer nodes than differentiating the decomposition."""
    x, t, g, attrs = n["input"], n["target"], n.g["output"], n.attrs
    rank = len(static_shape(x, "CrossEntropyLoss", n.path))
    probabilities = len(static_shape(t, "CrossEntropyLoss", n.path)) == rank
    (classes,) = _static_dims(x, (1 if rank >= 2 else 0,), "CrossEntropyLoss", n.path)
    full = max(rank, 2)
    weight, smoothing, reduction = attrs["weight"], attrs["label_smoothing"], attrs["reduction"]
    if rank == 2 and not probabilities and weight is None and not smoothing and reduction == "mean":
        if not 0 <= attrs["ignore_index"] < classes:  # ignored targets are exactly those outside [0, C)
            return {"input": b.cross_entropy_grad(x, t, g)}
    class_weight = None if weight is None else _class_column(b, tuple(weight), full)
    if rank == 1:  # [C] is one row of [1, C]
        x = b.reshape(x, shape=(1, classes))
    if probabilities:
        q = t if rank > 1 else b.reshape(t, shape=(1, classes))
        if smoothing:
            q = b.add(b.mul(q, b.scalar(1.0 - smoothing)), b.scalar(smoothing / classes))
        if class_weight is not None:
            q = b.mul(q, class_weight)
        if reduction == "mean":  # the mean over every loss: each one's cotangent is g / their count
            g = b.expand_reduced(g, b.sum(q, axis=1), axis=None, keepdim=False, scale=True)
    else:
        onehot = b.one_hot(t, num_classes=classes)
        if rank == 1:
            onehot = b.reshape(onehot, shape=(1, classes))
        elif full > 2:
            onehot = b.transpose(onehot, axes=(0, full - 1, *range(1, full - 1)))
        if 0 <= attrs["ignore_index"] < classes:
            marker = tuple(float(c != attrs["ignore_index"]) for c in range(classes))
            onehot = b.mul(onehot, _class_column(b, marker, full))
        q = weighted = onehot if class_weight is None else b.mul(onehot, class_weight)
        if smoothing:
            spread = b.mul(b.sum(onehot, axis=1, keepdim=True), b.scalar(smoothing / classes))
            spread = spread if class_weight is None else b.mul(spread, class_weight)
            q = b.add(b.mul(weighted, b.scalar(1.0 - smoothing)), spread)
        if reduction == "mean":  # the loss is divided by the targets' total weight
            g = b.div(g, b.sum(weighted))
    row = b.sub(b.mul(b.softmax(x, axis=1), b.sum(q, axis=1, keepdim=True)), q)
    if reduction == "none" or (probabilities and reduction == "mean"):  # one cotangent per loss, [N, d...]
        if rank == 1 and reduction == "none":
            g = b.reshape(g, shape=(1,))
        g = b.expand_reduced(g, row, axis=1, keepdim=False, scale=False)
    grad = b.mul(row, g)
    return {"input": grad if rank > 1 else b.reshape(grad, shape=(classes,))}


declare(
    Primitive(
        "cross_entropy",
        (
            Port("input"),
            Port("target", kind="any", differentiable=False, index_of=("input", 1), index_exempt="ignore_index"),
        ),
        lambda a: {"input": ["...i"], "target": ["...t"], "output": ["...o"] if a["reduction"] == "none" else []},
        attrs={"weight": None, "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0},
        rule=_cross_entropy_shapes,
        vjp=_cross_entropy_vjp,
        decomposition=_cross_entropy,
        settle=_cross_entropy_settle,
        doc=(
            "torch.nn.functional.cross_entropy over logits [C], [N, C] or [N, C, d...]; the target holds class "
            "indices (int, the logits' shape without the class axis) or class probabilities (float, the logits' "
            "shape)."
        ),
        examples=(
            Example({"input": (5, 4), "target": (5,)}, ints={"target": 4}, sweep={"reduction": REDUCTIONS}),
            Example(
                {"input": (6, 4, 2), "target": (6, 2)},
                {"weight": (1.0, 2.0, 0.5, 1.5), "label_smoothing": 0.1, "ignore_index": 1},
                ints={"target": 4},
                sweep={"reduction": REDUCTIONS},
                name="weighted_smoothed",
            ),
            Example({"input": (4,), "target": ()}, ints={"target": 4}, sweep={"reduction": REDUCTIONS}, name="1d"),
            Example(
                {"input": (3, 4, 2, 2), "target": (3, 2, 2)},
                {"weight": (0.5, 2.0, 1.0, 1.5), "ignore_index": -1},
                ints={"target": (-1, 4)},
                sweep={"reduction": REDUCTIONS},
                name="4d_ignored",
            ),
            Example(
                {"input": (5, 4), "target": (5, 4)},
                {"label_smoothing": 0.2},
                sweep={"reduction": REDUCTIONS},
                name="probabilities",
            ),
            Example(
                {"input": (3, 4, 2), "target": (3, 4, 2)},
                {"weight": (1.0, 2.0, 0.5, 1.5)},
                sweep={"reduction": REDUCTIONS},
                name="probabilities_3d_weighted",
            ),
            Example({"input": (4,), "target": (4,)}, sweep={"reduction": REDUCTIONS}, name="probabilities_1d"),
        ),
    )
)


def _cross_entropy_grad(b: Builder, n: Applied) -> dict[str, object]:
    """(softmax(input) * valid - one_hot(target)) * gradient / valid count: the mean loss's cotangent, as above."""
    x, t, g = n["input"], n["target"], n["gradient"]
    (classes,) = _static_dims(x, (1,), "CrossEntropyLoss", n.path)
    onehot = b.one_hot(t, num_classes=classes)
    g = b.div(g, b.sum(onehot))
    return {"output": b.mul(b.sub(b.mul(b.softmax(x, axis=1), b.sum(onehot, axis=1, keepdim=True)), onehot), g)}


declare(
    Primitive(
        "cross_entropy_grad",
        (Port("input"), Port("target", kind="int", differentiable=False), Port("gradient", differentiable=False)),
        {"input": ["N", "C"], "target": ["N"], "gradient": [], "output": ["N", "C"]},
        decomposition=_cross_entropy_grad,
        doc=(
            "The logits' gradient of cross_entropy over [N, C] with class indices, mean reduction, no weight "
            "or smoothing; targets outside [0, C) are ignored. One op so a backend can fuse it."
        ),
        examples=(Example({"input": (6, 4), "target": (6,), "gradient": ()}, ints={"target": (-1, 4)}, grads=False),),
    )
)
