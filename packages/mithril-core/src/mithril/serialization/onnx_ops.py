"""One ONNX emitter per primitive, like a backend's op table: `OPS[primitive](ctx, node, ins, out)`.

An emitter appends ONNX nodes to `ctx` that compute the primitive's canonical output into the
tensor named `out` from the tensors named in `ins` (only the inputs the node has). Primitives
without an emitter are decomposed into ones with an emitter where their declaration allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from ..errors import UnsupportedError
from ..graph import Edge, Node
from ..primitives.indexing import expand_index, resolve_slice
from ..shapes import Renderer

__all__ = ["OPS", "Context", "Emitter"]


class Context:
    """What emitters write into: ONNX nodes and constant initializers, with fresh names and the opset."""

    def __init__(self, opset: int, owner: str) -> None:
        from onnx import helper, numpy_helper  # noqa: PLC0415 - the optional dependency, imported on use

        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset = opset
        self.owner = owner
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"_{hint}_{self._count}"

    def add(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        """Append one ONNX node; returns its (single) output name."""
        name = out if out is not None else self.fresh(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [name], name=self.fresh(op_type), **attrs))
        return name

    def const(self, value: Any, dtype: Any = np.float32, hint: str = "const") -> str:
        """A constant initializer holding `value`."""
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64, "shape")

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool, out: str | None = None) -> str:
        """A Reduce* node: axes as an input from opset 18 (13 for ReduceSum), as an attribute before."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes is None:
            return self.add(op_type, [x], out, keepdims=int(keepdims))
        if as_input:
            return self.add(op_type, [x, self.ints(axes)], out, keepdims=int(keepdims))
        return self.add(op_type, [x], out, axes=list(axes), keepdims=int(keepdims))

    def refuse(self, node: Node, why: str) -> UnsupportedError:
        layer = node.op.describe() if node.op is not None else repr(node.path)
        return UnsupportedError(f"ml.export_onnx({self.owner}): layer {layer} cannot be exported to ONNX: {why}")


Emitter = Callable[[Context, Node, dict[str, str], str], None]


def rank(ctx: Context, node: Node, edge: Edge) -> int:
    """The rank of `edge`; refused when the shapes given leave it open."""
    items = Renderer().items(edge.shape.items)
    if any(t.startswith("...") for t in items):
        raise ctx.refuse(node, "the rank of its input is not known; give the input's shape in shapes=")
    return len(items)


def dims(edge: Edge) -> list[int | None]:
    return [int(t) if t.isdigit() else None for t in Renderer().items(edge.shape.items)]


def _same(op_type: str, **attrs: Any) -> Emitter:
    def emit(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
        ctx.add(op_type, list(ins.values()), out, **attrs)

    return emit


def _attr(op_type: str, **names: str) -> Emitter:
    """An ONNX op taking the node's inputs in order, with attributes renamed from the node's."""

    def emit(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
        ctx.add(op_type, list(ins.values()), out, **{onnx: node.attrs[ours] for onnx, ours in names.items()})

    return emit


def _scalar(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    tensor = ctx.numpy_helper.from_array(np.asarray(node.attrs["value"], dtype=np.float32), out)
    ctx.add("Constant", [], out, value=tensor)


def _constant(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    value = np.asarray(node.attrs["value"], dtype=np.float32).reshape(node.attrs["shape"])
    ctx.add("Constant", [], out, value=ctx.numpy_helper.from_array(value, out))


def _square(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    ctx.add("Mul", [ins["input"], ins["input"]], out)


def _silu(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    ctx.add("Mul", [ins["input"], ctx.add("Sigmoid", [ins["input"]])], out)


def _gelu(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    x = ins["input"]
    if node.attrs["approximate"] == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ctx.add("Mul", [ctx.add("Mul", [x, x]), x])
        inner = ctx.add("Add", [x, ctx.add("Mul", [cube, ctx.const(0.044715)])])
        gate = ctx.add("Tanh", [ctx.add("Mul", [inner, ctx.const(math.sqrt(2.0 / math.pi))])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        gate = ctx.add("Erf", [ctx.add("Mul", [x, ctx.const(1.0 / math.sqrt(2.0))])])
    half = ctx.add("Mul", [x, ctx.const(0.5)])
    ctx.add("Mul", [half, ctx.add("Add", [gate, ctx.const(1.0)])], out)


def _reduce(op_type: str) -> Emitter:
    def emit(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
        axis = node.attrs["axis"]
        axes = None if axis is None else [axis] if isinstance(axis, int) else list(axis)
        ctx.reduce(op_type, ins["input"], axes, node.attrs["keepdim"], out)

    return emit


def _linear(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    product = ctx.add("MatMul", [ins["input"], ctx.add("Transpose", [ins["weight"]], perm=[1, 0])])
    if "bias" in ins:
        ctx.add("Add", [product, ins["bias"]], out)
    else:
        ctx.add("Identity", [product], out)


def _reshape(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    shape = list(node.attrs["shape"])
    ctx.add("Reshape", [ins["input"], ctx.ints(shape)], out, allowzero=int(0 in shape))


def _flatten(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    n = rank(ctx, node, node.inputs["input"])
    start, end = node.attrs["start_dim"] % max(n, 1), node.attrs["end_dim"] % max(n, 1)
    shape = [0] * start + [-1] + [0] * (n - end - 1)  # 0 keeps the input's dimension
    ctx.add("Reshape", [ins["input"], ctx.ints(shape)], out)


def _transpose(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    axes = node.attrs["axes"]
    n = rank(ctx, node, node.inputs["input"])
    perm = list(reversed(range(n))) if axes is None else [a % n for a in axes]
    ctx.add("Transpose", [ins["input"]], out, perm=perm)


def _swapaxes(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    n = rank(ctx, node, node.inputs["input"])
    perm = list(range(n))
    a, b = node.attrs["axis0"] % n, node.attrs["axis1"] % n
    perm[a], perm[b] = perm[b], perm[a]
    ctx.add("Transpose", [ins["input"]], out, perm=perm)


def _like(op_type: str) -> Emitter:
    def emit(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
        ctx.add(op_type, [ins["input"], ctx.add("Shape", [ins["like"]])], out)

    return emit


def _window_attrs(node: Node) -> dict[str, Any]:
    pads = list(node.attrs["padding"])
    return {"kernel_shape": list(node.attrs["kernel_size"]), "strides": list(node.attrs["stride"]), "pads": pads * 2}


def _conv(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    attrs = _window_attrs(node)
    ctx.add(
        "Conv", list(ins.values()), out, dilations=list(node.attrs["dilation"]), group=node.attrs["groups"], **attrs
    )


def _max_pool(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    attrs = _window_attrs(node)
    ceil = int(node.attrs["ceil_mode"])
    ctx.add("MaxPool", [ins["input"]], out, dilations=list(node.attrs["dilation"]), ceil_mode=ceil, **attrs)


def _avg_pool(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    attrs = _window_attrs(node)
    divisor = node.attrs["divisor_override"]
    if divisor is None:
        include = int(node.attrs["count_include_pad"])
        ctx.add(
            "AveragePool",
            [ins["input"]],
            out,
            ceil_mode=int(node.attrs["ceil_mode"]),
            count_include_pad=include,
            **attrs,
        )
        return
    if node.attrs["ceil_mode"]:
        raise ctx.refuse(node, "divisor_override with ceil_mode has no ONNX equivalent")
    mean = ctx.add("AveragePool", [ins["input"]], count_include_pad=1, **attrs)  # sum / prod(kernel)
    ctx.add("Mul", [mean, ctx.const(math.prod(node.attrs["kernel_size"]) / divisor)], out)


def _channel_params(ctx: Context, ins: dict[str, str], channels: int) -> tuple[str, str]:
    scale = ins.get("weight") or ctx.const(np.ones(channels), hint="ones")
    bias = ins.get("bias") or ctx.const(np.zeros(channels), hint="zeros")
    return scale, bias


def _batch_norm_inference(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    channels = dims(node.inputs["input"])[1]
    if channels is None or "running_mean" not in ins:
        raise ctx.refuse(node, "batch norm needs a known channel count and running statistics")
    scale, bias = _channel_params(ctx, ins, channels)
    inputs = [ins["input"], scale, bias, ins["running_mean"], ins["running_var"]]
    ctx.add("BatchNormalization", inputs, out, epsilon=float(node.attrs["eps"]))


def _layer_norm(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    normalized = list(node.attrs["normalized_shape"])
    scale = ins.get("weight") or ctx.const(np.ones(normalized), hint="ones")
    inputs = [ins["input"], scale] + ([ins["bias"]] if "bias" in ins else [])
    ctx.add("LayerNormalization", inputs, out, axis=-len(normalized), epsilon=float(node.attrs["eps"]))


def _group_norm(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    x, n = ins["input"], rank(ctx, node, node.inputs["input"])
    groups, channels = node.attrs["num_groups"], dims(node.inputs["input"])[1]
    if channels is None:
        raise ctx.refuse(node, "the channel count is not known; give the input's shape in shapes=")
    grouped = ctx.add("Reshape", [x, ctx.ints([0, groups, -1])])  # [N, G, C/G * spatial]
    ones, zeros = ctx.const(np.ones(groups), hint="ones"), ctx.const(np.zeros(groups), hint="zeros")
    normed = ctx.add("InstanceNormalization", [grouped, ones, zeros], epsilon=float(node.attrs["eps"]))
    back = ctx.add("Reshape", [normed, ctx.add("Shape", [x])])
    if "weight" not in ins:
        ctx.add("Identity", [back], out)
        return
    per_channel = ctx.ints([channels] + [1] * (n - 2))
    scaled = ctx.add("Mul", [back, ctx.add("Reshape", [ins["weight"], per_channel])])
    ctx.add("Add", [scaled, ctx.add("Reshape", [ins["bias"], per_channel])], out)


def _embedding(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    ctx.add("Gather", [ins["weight"], ins["input"]], out, axis=0)


def _arange(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    """torch.arange as int64: a constant with `end`, else Range(start, start + step * like.shape[dim], step)."""
    start, end, step = node.attrs["start"], node.attrs["end"], node.attrs["step"]
    if end is not None:
        value = np.arange(start, end, step, dtype=np.int64)
        ctx.add("Constant", [], out, value=ctx.numpy_helper.from_array(value, out))
        return
    dim = node.attrs["dim"] % rank(ctx, node, node.inputs["like"])
    size = ctx.add("Gather", [ctx.add("Shape", [ins["like"]]), ctx.const(dim, np.int64, "dim")], axis=0)
    first, stride = ctx.const(start, np.int64, "start"), ctx.const(step, np.int64, "step")
    limit = ctx.add("Add", [first, ctx.add("Mul", [size, stride])])
    ctx.add("Range", [first, limit, stride], out)


_LAST, _FIRST = int(np.iinfo(np.int64).max), int(np.iinfo(np.int64).min)  # ONNX Slice's "to the end" bounds


def _slice(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    """Basic indexing: one Slice (an int is a one-long slice), Squeeze of the int axes, Unsqueeze for the Nones.
    Axes of unknown size keep Python's slice bounds, which Slice reads alike (negative from the end, clamped)."""
    edge = node.inputs["input"]
    shape = dims(edge)
    bounds: list[tuple[int, int, int, int]] = []  # (axis, start, end, step) of each axis Slice narrows
    dropped: list[int] = []
    new: list[int] = []
    axis = out_axis = 0
    for item in expand_index(node.attrs["index"], rank(ctx, node, edge)):
        if item is None:
            new.append(out_axis)
            out_axis += 1
            continue
        size = shape[axis]
        if isinstance(item, int):
            bounds.append((axis, item, item + 1 or _LAST, 1))  # -1 + 1 would be 0, an empty slice
            dropped.append(axis)
            axis += 1
            continue
        piece = cast(tuple[Any, ...], item)  # expand_index leaves slices and pieces besides ints and Nones
        if size is not None:
            start, step, length = resolve_slice(piece, size, axis)
            end = start + step * length
            if (start, step, length) != (0, 1, size):
                bounds.append((axis, start, end if end >= 0 else _FIRST, step))  # _FIRST: a negative step to 0
        elif piece[0] in ("chunk", "split", "sections"):
            raise ctx.refuse(node, f"it splits axis {axis}, whose size is not known; give it in shapes=")
        elif piece != (None, None, None):
            first, stop, by = piece
            step = by or 1
            start = first if first is not None else 0 if step > 0 else _LAST
            bounds.append((axis, start, stop if stop is not None else _LAST if step > 0 else _FIRST, step))
        axis += 1
        out_axis += 1
    x = ins["input"]
    if bounds:
        axes, starts, ends, steps = zip(*bounds)
        x = ctx.add("Slice", [x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(steps)])
    if dropped:
        x = ctx.add("Squeeze", [x, ctx.ints(dropped)])
    if new:
        x = ctx.add("Unsqueeze", [x, ctx.ints(new)])
    ctx.add("Identity", [x], out)


def _split_heads(ctx: Context, x: str, n: int, heads: int, width: int) -> str:
    """[..., T, heads * D] (rank n) -> [..., heads, T, D]; Reshape's 0 keeps the (maybe symbolic) leading dims."""
    split = ctx.add("Reshape", [x, ctx.ints([0] * (n - 1) + [heads, width // heads])])
    perm = list(range(n + 1))
    perm[-3], perm[-2] = perm[-2], perm[-3]
    return ctx.add("Transpose", [split], perm=perm)


def _positions(ctx: Context, x: str, axis: int) -> str:
    """0 .. x.shape[axis] - 1 as int64."""
    size = ctx.add("Gather", [ctx.add("Shape", [x]), ctx.const(axis, np.int64, "axis")], axis=0)
    return ctx.add("Range", [ctx.const(0, np.int64, "zero"), size, ctx.const(1, np.int64, "one")])


def _attention_heads(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    """Multi-head attention as MatMul/Softmax with masks (the primitive's decomposition), symbolic leading dims kept."""
    at = node.attrs
    heads, kv = at["num_heads"], at["num_kv_heads"] or at["num_heads"]
    n = rank(ctx, node, node.inputs["query"])
    known = {key: dims(node.inputs[key])[-1] for key in ("query", "key", "value")}
    if rank(ctx, node, node.inputs["key"]) != n:
        raise ctx.refuse(node, "query and key must have the same rank")
    widths: dict[str, int] = {}
    for key, width in known.items():
        if width is None:
            raise ctx.refuse(node, f"the size of {key}'s last dimension must be known; give it in shapes=")
        widths[key] = width
    q = _split_heads(ctx, ins["query"], n, heads, widths["query"])
    k = _split_heads(ctx, ins["key"], n, kv, widths["key"])
    v = _split_heads(ctx, ins["value"], n, kv, widths["value"])
    if kv != heads:  # each key/value head serves heads // kv query heads (torch's repeat_interleave)
        k = _repeat_heads(ctx, k, n, kv, heads, widths["key"] // kv)
        v = _repeat_heads(ctx, v, n, kv, heads, widths["value"] // kv)
    scale = at["scale"] if at["scale"] is not None else 1.0 / math.sqrt(widths["query"] // heads)
    key_t = ctx.add("Transpose", [k], perm=[*range(n - 1), n, n - 1])
    scores = ctx.add("Mul", [ctx.add("MatMul", [q, key_t]), ctx.const(scale)])
    neg_inf = ctx.const(-np.inf)
    if at["is_causal"]:
        rows = ctx.add("Unsqueeze", [_positions(ctx, q, n - 1), ctx.ints([1])])
        cols = ctx.add("Unsqueeze", [_positions(ctx, k, n - 1), ctx.ints([0])])
        scores = ctx.add("Where", [ctx.add("Greater", [cols, rows]), neg_inf, scores])
    if "attn_mask" in ins:
        if at["bool_mask"]:
            keep = ctx.add("Cast", [ins["attn_mask"]], to=ctx.helper.TensorProto.BOOL)
            scores = ctx.add("Where", [keep, scores, neg_inf])
        else:
            scores = ctx.add("Add", [scores, ins["attn_mask"]])
    attended = ctx.add("MatMul", [ctx.add("Softmax", [scores], axis=-1), v])
    perm = list(range(n + 1))
    perm[-3], perm[-2] = perm[-2], perm[-3]
    merged = ctx.add("Transpose", [attended], perm=perm)
    ctx.add("Reshape", [merged, ctx.ints([0] * (n - 1) + [-1])], out)


def _repeat_heads(ctx: Context, x: str, n: int, kv: int, heads: int, size: int) -> str:
    """[..., kv, S, D] (rank n + 1) -> [..., heads, S, D], each head repeated heads // kv times."""
    spread = ctx.add("Unsqueeze", [x, ctx.ints([n - 1])])  # [..., kv, 1, S, D]
    expanded = ctx.add("Expand", [spread, ctx.ints([1] * (n - 2) + [1, heads // kv, 1, 1])])
    return ctx.add("Reshape", [expanded, ctx.ints([0] * (n - 2) + [heads, -1, size])])


def _mse_loss(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    diff = ctx.add("Sub", [ins["input"], ins["target"]])
    reduction = node.attrs["reduction"]
    if reduction == "none":
        ctx.add("Mul", [diff, diff], out)
        return
    ctx.reduce("ReduceMean" if reduction == "mean" else "ReduceSum", ctx.add("Mul", [diff, diff]), None, False, out)


def _cross_entropy(ctx: Context, node: Node, ins: dict[str, str], out: str) -> None:
    if node.attrs["label_smoothing"]:
        raise ctx.refuse(node, "label_smoothing has no ONNX equivalent (SoftmaxCrossEntropyLoss has none)")
    if rank(ctx, node, node.inputs["target"]) == rank(ctx, node, node.inputs["input"]):
        raise ctx.refuse(
            node, "class-probability targets have no ONNX equivalent (SoftmaxCrossEntropyLoss takes indices)"
        )
    inputs = [ins["input"], ins["target"]]
    if node.attrs["weight"] is not None:
        inputs.append(ctx.const(node.attrs["weight"], hint="class_weight"))
    attrs = {"reduction": node.attrs["reduction"], "ignore_index": node.attrs["ignore_index"]}
    ctx.add("SoftmaxCrossEntropyLoss", inputs, out, **attrs)


OPS: dict[str, Emitter] = {
    "identity": _same("Identity"),
    "neg": _same("Neg"),
    "exp": _same("Exp"),
    "log": _same("Log"),
    "sqrt": _same("Sqrt"),
    "abs": _same("Abs"),
    "sign": _same("Sign"),
    "tanh": _same("Tanh"),
    "erf": _same("Erf"),
    "sin": _same("Sin"),
    "cos": _same("Cos"),
    "relu": _same("Relu"),
    "sigmoid": _same("Sigmoid"),
    "square": _square,
    "silu": _silu,
    "gelu": _gelu,
    "leaky_relu": _attr("LeakyRelu", alpha="negative_slope"),
    "add": _same("Add"),
    "sub": _same("Sub"),
    "mul": _same("Mul"),
    "div": _same("Div"),
    "pow": _same("Pow"),
    "maximum": _same("Max"),
    "minimum": _same("Min"),
    "greater": _same("Greater"),
    "equal": _same("Equal"),
    "where": _same("Where"),
    "scalar": _scalar,
    "constant": _constant,
    "softmax": _attr("Softmax", axis="axis"),
    "log_softmax": _attr("LogSoftmax", axis="axis"),
    "sum": _reduce("ReduceSum"),
    "mean": _reduce("ReduceMean"),
    "max": _reduce("ReduceMax"),
    "expand_like": _like("Expand"),
    "reshape_like": _like("Reshape"),
    "reshape": _reshape,
    "slice": _slice,
    "concat": _attr("Concat", axis="axis"),
    "flatten": _flatten,
    "transpose": _transpose,
    "swapaxes": _swapaxes,
    "matmul": _same("MatMul"),
    "linear": _linear,
    "conv": _conv,
    "max_pool": _max_pool,
    "avg_pool": _avg_pool,
    "batch_norm_inference": _batch_norm_inference,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "embedding": _embedding,
    "arange": _arange,
    "attention_heads": _attention_heads,
    "mse_loss": _mse_loss,
    "cross_entropy": _cross_entropy,
}
