"""How each core primitive becomes ggml graph nodes.

Tensors travel as `T` (a ggml tensor plus its NumPy shape; ggml stores dimensions
reversed). Every shape is checked here, in Python, before ggml sees it: a failed
ggml assertion aborts the process. In gradient mode (`Builder.grad`) only ops with
a ggml backward rule are emitted: sigmoid, tanh and leaky_relu are composed from
exp/log/relu, layer norm from sums, and broadcasting is made explicit with repeat.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import ggml.ggml as G
import numpy as np

from mithril.errors import ShapeError, UnsupportedError
from mithril.graph import Edge, Node
from mithril.models.rules import flatten_span, normalize_axes

__all__ = ["T", "Builder", "OPS", "GRAD_PROBLEMS", "ne4", "check_node", "prefers_out_prod"]

MAX_RANK = 4
# A float32 linear layer y = x W^T costs, per row of x, N dot products of length K through
# ggml_mul_mat, or K axpy updates of length N through ggml_out_prod (which takes W^T).
# ggml's F32 kernels do 64 floats per vector step and the remainder in a scalar loop: the
# remainder of a dot product (a reduction) runs about 0.3 ns a float, that of an axpy is
# nearly free. Per-call, per-step and per-float costs in ns, fitted on layers at batch 1
# to 128 (one thread, this machine's AVX-512 build; see the package README).
_STEP = 64
_DOT = (3.5, 2.0, 0.3)  # ggml_mul_mat: per dot product, per full step, per remainder float
_AXPY = (3.0, 2.5, 0.06)  # ggml_out_prod: per axpy, per full step, per remainder float
_OUT_PROD_MARGIN = 1.5  # out_prod must win clearly: on large layers mul_mat is better tuned


def _row_cost(calls: int, length: int, cost: tuple[float, float, float]) -> float:
    return calls * (cost[0] + cost[1] * (length // _STEP) + cost[2] * (length % _STEP))


def prefers_out_prod(out_features: int, in_features: int) -> bool:
    """Whether ggml_out_prod with W^T beats ggml_mul_mat for a float32 linear weight [N, K]."""
    n, k = out_features, in_features
    return _OUT_PROD_MARGIN * _row_cost(k, n, _AXPY) < _row_cost(n, k, _DOT)


class T(NamedTuple):
    """A ggml tensor and the NumPy shape it stands for."""

    tensor: Any
    shape: tuple[int, ...]


def ne4(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """ggml's `ne` (innermost first, padded to 4) for a NumPy shape."""
    if len(shape) > MAX_RANK:
        raise UnsupportedError(f"backend 'ggml' supports tensors of rank <= {MAX_RANK}, got shape {list(shape)}")
    ne = list(reversed(shape)) + [1] * (MAX_RANK - len(shape))
    return ne[0], ne[1], ne[2], ne[3]


HostConvert = Callable[[Any], tuple[np.ndarray, ...]]


class Builder:
    """Emits ggml ops into one graph context; `host_tensor` makes tensors the host fills."""

    def __init__(
        self,
        ctx: Any,
        grad: bool,
        host_tensor: Callable[..., Any],
        rng: np.random.Generator,
        transposed: dict[int, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.grad = grad
        self._host_tensor = host_tensor
        self.rng = rng
        self._transposed = transposed or {}

    def transposed_weight(self, w: T) -> Any:
        """A contiguous W^T tensor for weight `w` when one is stored and this graph has no gradients."""
        if self.grad:  # ggml has no backward rule for out_prod
            return None
        return self._transposed.get(ctypes.addressof(w.tensor.contents))

    # -- tensors the host writes -----------------------------------------------------
    def constant(self, value: np.ndarray) -> T:
        """A float32 tensor holding `value`, written once after allocation."""
        arr = np.ascontiguousarray(value, np.float32)
        return T(self._host_tensor(arr.shape, G.GGML_TYPE_F32, None, arr), arr.shape)

    def host_inputs(self, edge: Edge | None, specs: list[tuple[tuple[int, ...], int]], convert: HostConvert) -> list[T]:
        """Tensors computed on the host from input `edge` (or from nothing) before every run."""
        tensors = self._host_tensor(None, None, (edge, specs, convert), None)
        return [T(t, shape) for t, (shape, _) in zip(tensors, specs)]

    # -- layout --------------------------------------------------------------------
    def cont(self, x: T) -> T:
        return x if G.ggml_is_contiguous(x.tensor) else T(G.ggml_cont(self.ctx, x.tensor), x.shape)

    def reshape(self, x: T, shape: tuple[int, ...]) -> T:
        if math.prod(shape) != math.prod(x.shape):
            raise ShapeError(f"ggml: cannot reshape {list(x.shape)} to {list(shape)}")
        x = self.cont(x)
        if ne4(shape) == ne4(x.shape):
            return T(x.tensor, shape)
        return T(G.ggml_reshape_4d(self.ctx, x.tensor, *ne4(shape)), shape)

    def permute(self, x: T, perm: tuple[int, ...]) -> T:
        """NumPy's transpose(x, perm), made contiguous."""
        rank = len(perm)
        if perm == tuple(range(rank)):
            return x
        axes = [0, 1, 2, 3]
        for j, p in enumerate(perm):
            axes[rank - 1 - p] = rank - 1 - j
        source = self.cont(x).tensor
        if self.grad:
            # ggml passes a permute's gradient on as a strided view, which elementwise
            # backward ops reject; a reshape in front makes ggml copy it contiguous.
            source = G.ggml_reshape_4d(self.ctx, source, *ne4(x.shape))
        view = G.ggml_permute(self.ctx, source, *axes)
        return T(G.ggml_cont(self.ctx, view), tuple(x.shape[p] for p in perm))

    def repeat(self, x: T, shape: tuple[int, ...]) -> T:
        """Broadcast `x` to `shape` explicitly (ggml's repeat has a backward rule)."""
        if ne4(shape) == ne4(x.shape):
            return T(x.tensor, shape)
        return T(G.ggml_repeat_4d(self.ctx, x.tensor, *ne4(shape)), shape)

    # -- arithmetic ----------------------------------------------------------------
    def unary(self, fn: Callable[..., Any], x: T, *args: Any) -> T:
        return T(fn(self.ctx, x.tensor, *args), x.shape)

    def scale(self, x: T, s: float, b: float = 0.0) -> T:
        if b:
            return T(G.ggml_scale_bias(self.ctx, x.tensor, s, b), x.shape)
        return T(G.ggml_scale(self.ctx, x.tensor, s), x.shape)

    def binary(self, fn: Callable[..., Any], a: T, b: T, commutative: bool = False) -> T:
        """NumPy-broadcasting binary op; ggml itself broadcasts only its second operand."""
        try:
            out = tuple(np.broadcast_shapes(a.shape, b.shape))
        except ValueError:
            raise ShapeError(f"ggml: cannot broadcast {list(a.shape)} with {list(b.shape)}") from None
        if self.grad:
            a, b = self.repeat(a, out), self.repeat(b, out)
        elif ne4(a.shape) != ne4(out):
            if commutative and ne4(b.shape) == ne4(out):
                a, b = b, a
            else:
                a = self.repeat(a, out)
        return T(fn(self.ctx, self.cont(a).tensor, self.cont(b).tensor), out)

    def add(self, a: T, b: T) -> T:
        return self.binary(G.ggml_add, a, b, True)

    def sub(self, a: T, b: T) -> T:
        return self.binary(G.ggml_sub, a, b)

    def mul(self, a: T, b: T) -> T:
        return self.binary(G.ggml_mul, a, b, True)

    def div(self, a: T, b: T) -> T:
        return self.binary(G.ggml_div, a, b)

    def sigmoid(self, x: T) -> T:
        if not self.grad:
            return self.unary(G.ggml_sigmoid, x)
        e = self.scale(self.unary(G.ggml_exp, self.unary(G.ggml_neg, x)), 1.0, 1.0)
        return self.unary(G.ggml_exp, self.unary(G.ggml_neg, self.unary(G.ggml_log, e)))

    def tanh(self, x: T) -> T:
        if not self.grad:
            return self.unary(G.ggml_tanh, x)
        return self.scale(self.sigmoid(self.scale(x, 2.0)), 2.0, -1.0)

    def reduce(self, x: T, axis: Any, keepdim: bool, kind: str) -> T:
        """sum / mean / max over `axis` (NumPy semantics) by moving the axes last."""
        rank = len(x.shape)
        axes = normalize_axes(axis, rank)
        if not axes:
            return x
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        out = kept if keepdim else tuple(d for i, d in enumerate(x.shape) if i not in axes)
        n = math.prod(x.shape[i] for i in axes)
        if kind != "max" and len(axes) == rank:
            y = T(G.ggml_sum(self.ctx, self.cont(x).tensor), ())
        else:
            rest = [i for i in range(rank) if i not in axes]
            rows = self.reshape(self.permute(x, (*rest, *axes)), (math.prod(x.shape[i] for i in rest), n))
            if kind == "max":
                pooled = G.ggml_pool_2d(self.ctx, rows.tensor, G.GGML_OP_POOL_MAX, n, 1, n, 1, 0.0, 0.0)
                y = T(pooled, (rows.shape[0], 1))
                if self.grad:
                    y = self.tied_max(rows, y)
            else:
                y = T(G.ggml_sum_rows(self.ctx, rows.tensor), (rows.shape[0], 1))
        if kind == "mean":
            y = self.scale(y, 1.0 / n)
        return self.reshape(y, out)

    def tied_max(self, rows: T, peak: T) -> T:
        """Row maxima whose gradient ties share evenly, as on every other backend (torch.amax's rule).

        ggml's max pooling sends a row's whole gradient to its first maximum. Written as the
        mean of the row over the positions that reach `peak`, with the positions found through
        ggml_step (whose backward passes nothing), the gradient is split over all of them.
        """
        below = self.unary(G.ggml_step, self.sub(peak, rows))
        at_peak = self.scale(below, -1.0, 1.0)
        total = T(G.ggml_sum_rows(self.ctx, self.mul(rows, at_peak).tensor), peak.shape)
        count = T(G.ggml_sum_rows(self.ctx, at_peak.tensor), peak.shape)
        return self.div(total, count)

    def move_axis_last(self, x: T, axis: int) -> tuple[T, tuple[int, ...]]:
        rank = len(x.shape)
        ax = normalize_axes(axis, rank)[0]
        perm = tuple(i for i in range(rank) if i != ax) + (ax,)
        return self.permute(x, perm), tuple(int(i) for i in np.argsort(perm))

    def log_softmax_last(self, x: T) -> T:
        rows = self.reshape(x, (math.prod(x.shape[:-1]), x.shape[-1]))
        n = rows.shape[1]
        peak = T(G.ggml_pool_2d(self.ctx, rows.tensor, G.GGML_OP_POOL_MAX, n, 1, n, 1, 0.0, 0.0), (rows.shape[0], 1))
        shifted = self.sub(rows, peak)
        total = T(G.ggml_sum_rows(self.ctx, self.unary(G.ggml_exp, shifted).tensor), peak.shape)
        return self.reshape(self.sub(shifted, self.unary(G.ggml_log, total)), x.shape)

    def normalize_rows(self, rows: T, eps: float) -> T:
        """(x - mean) / sqrt(var + eps) along the last axis of a 2-D tensor."""
        if not self.grad:
            return T(G.ggml_norm(self.ctx, rows.tensor, eps), rows.shape)
        n = rows.shape[1]
        mean = self.scale(T(G.ggml_sum_rows(self.ctx, rows.tensor), (rows.shape[0], 1)), 1.0 / n)
        centred = self.sub(rows, mean)
        var = self.scale(T(G.ggml_sum_rows(self.ctx, self.unary(G.ggml_sqr, centred).tensor), mean.shape), 1.0 / n)
        return self.div(centred, self.unary(G.ggml_sqrt, self.scale(var, 1.0, eps)))


Inputs = dict[str, T]
Lowering = Callable[[Builder, Node, Inputs], "T | dict[str, T]"]


# -- primitives ----------------------------------------------------------------------------
def _linear(b: Builder, node: Node, x: Inputs) -> T:
    inp, w = b.cont(x["input"]), x["weight"]
    if not inp.shape or inp.shape[-1] != w.shape[1]:
        raise ShapeError(f"ggml linear {node.path!r}: input {list(inp.shape)} does not fit weight {list(w.shape)}")
    shape = (*inp.shape[:-1], w.shape[0])
    wt = b.transposed_weight(w)
    if wt is None:
        y = T(G.ggml_mul_mat(b.ctx, w.tensor, inp.tensor), shape)
    else:
        # out_prod(W^T [K,N], x^T [K,M]) is x W^T as an [M, N] result; x^T is a strided view.
        rows = b.reshape(inp, (math.prod(inp.shape[:-1]), inp.shape[-1])) if len(inp.shape) != 2 else inp
        prod = G.ggml_out_prod(b.ctx, wt, G.ggml_transpose(b.ctx, rows.tensor))
        y = b.reshape(T(prod, (rows.shape[0], w.shape[0])), shape)
    return b.add(y, x["bias"]) if "bias" in x else y


def _matmul(b: Builder, node: Node, x: Inputs) -> T:
    left, right = x["left"], x["right"]
    lmat = b.reshape(left, (1, *left.shape)) if len(left.shape) == 1 else left
    rmat = b.reshape(right, (*right.shape, 1)) if len(right.shape) == 1 else right
    (n, k), (k2, m) = lmat.shape[-2:], rmat.shape[-2:]
    if k != k2:
        raise ShapeError(f"ggml matmul {node.path!r}: cannot multiply {list(left.shape)} by {list(right.shape)}")
    batch = tuple(np.broadcast_shapes(lmat.shape[:-2], rmat.shape[:-2]))
    a = b.permute(rmat, (*range(len(rmat.shape) - 2), len(rmat.shape) - 1, len(rmat.shape) - 2))
    a_ne, b_ne = ne4(a.shape), ne4(lmat.shape)
    if b.grad or any(b_ne[i] % a_ne[i] for i in (2, 3)):
        a, lmat = b.repeat(a, (*batch, m, k)), b.repeat(lmat, (*batch, n, k))
    y = T(G.ggml_mul_mat(b.ctx, a.tensor, lmat.tensor), (*batch, n, m))
    final = (*batch, *((n,) if len(left.shape) > 1 else ()), *((m,) if len(right.shape) > 1 else ()))
    return b.reshape(y, final)


def _conv2d(b: Builder, node: Node, x: Inputs) -> T:
    inp, w = x["input"], x["weight"]
    (sh, sw), (ph, pw), (dh, dw) = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    groups = node.attrs["groups"]
    if len(inp.shape) != 4:
        raise ShapeError(f"ggml conv2d {node.path!r}: input must be [N, C, H, W], got {list(inp.shape)}")
    n, c, h, wd = inp.shape
    o, cg, kh, kw = w.shape
    if c != cg * groups:
        raise ShapeError(f"ggml conv2d {node.path!r}: input has {c} channels, weight expects {cg * groups}")
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ShapeError(f"ggml conv2d {node.path!r}: kernel does not fit input {list(inp.shape)}")
    inp = b.cont(inp)

    def conv(kernel: Any, data: Any) -> Any:
        return G.ggml_conv_2d(b.ctx, kernel, data, sw, sh, pw, ph, dw, dh)

    if groups == 1:
        y = conv(w.tensor, inp.tensor)
    else:
        og = o // groups
        xt, wt = inp.tensor.contents, w.tensor.contents
        y = None
        for g in range(groups):
            xs = G.ggml_view_4d(b.ctx, inp.tensor, wd, h, cg, n, xt.nb[1], xt.nb[2], xt.nb[3], g * cg * xt.nb[2])
            ws = G.ggml_view_4d(b.ctx, w.tensor, kw, kh, cg, og, wt.nb[1], wt.nb[2], wt.nb[3], g * og * wt.nb[3])
            part = conv(G.ggml_cont(b.ctx, ws), G.ggml_cont(b.ctx, xs))
            y = part if y is None else G.ggml_concat(b.ctx, y, part, 2)
    out = T(y, (n, o, ho, wo))
    return b.add(out, b.reshape(x["bias"], (o, 1, 1))) if "bias" in x else out


def _pool_geometry(node: Node, x: T) -> tuple[int, int, int, int, int, int, int, int]:
    (kh, kw), (sh, sw), (ph, pw) = node.attrs["kernel_size"], node.attrs["stride"], node.attrs["padding"]
    if len(x.shape) < 2:
        raise ShapeError(f"ggml pooling {node.path!r}: input must have at least 2 dimensions, got {list(x.shape)}")
    h, w = x.shape[-2:]
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ShapeError(f"ggml pooling {node.path!r}: window {kh}x{kw} does not fit input {list(x.shape)}")
    return kh, kw, sh, sw, ph, pw, ho, wo


def _pool(b: Builder, x: T, op: int, geometry: tuple[int, ...]) -> T:
    kh, kw, sh, sw, ph, pw, ho, wo = geometry
    return T(G.ggml_pool_2d(b.ctx, b.cont(x).tensor, op, kw, kh, sw, sh, float(pw), float(ph)), (*x.shape[:-2], ho, wo))


def _max_pool2d(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    return _pool(b, inp, G.GGML_OP_POOL_MAX, _pool_geometry(node, inp))


def _avg_pool2d(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    geometry = _pool_geometry(node, inp)
    y = _pool(b, inp, G.GGML_OP_POOL_AVG, geometry)
    kh, kw, _, _, ph, pw, _, _ = geometry
    divisor = node.attrs["divisor_override"]
    if divisor is not None:
        return b.scale(y, kh * kw / divisor)
    if not node.attrs["count_include_pad"] and (ph or pw):
        ones = b.constant(np.ones(inp.shape[-2:], np.float32))
        return b.div(y, _pool(b, ones, G.GGML_OP_POOL_AVG, geometry))
    return y


def _channel(b: Builder, v: T, rank: int) -> T:
    """A per-channel vector [C] shaped to broadcast over axis 1 of a rank-`rank` tensor."""
    return b.reshape(v, (v.shape[0],) + (1,) * (rank - 2))


def _batch_norm_inference(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    std = b.unary(G.ggml_sqrt, b.scale(x["running_var"], 1.0, node.attrs["eps"]))
    scale = b.div(x["weight"], std) if "weight" in x else b.div(b.constant(np.ones(std.shape, np.float32)), std)
    shift = b.unary(G.ggml_neg, b.mul(x["running_mean"], scale))
    if "bias" in x:
        shift = b.add(shift, x["bias"])
    rank = len(inp.shape)
    return b.add(b.mul(inp, _channel(b, scale, rank)), _channel(b, shift, rank))


def _batch_norm(b: Builder, node: Node, x: Inputs) -> dict[str, T]:
    inp = x["input"]
    n, c = inp.shape[0], inp.shape[1]
    count = math.prod(inp.shape) // c
    rows = b.reshape(b.permute(inp, (1, 0, *range(2, len(inp.shape)))), (c, count))
    mean = b.scale(T(G.ggml_sum_rows(b.ctx, rows.tensor), (c, 1)), 1.0 / count)
    centred = b.sub(rows, mean)
    var = b.scale(T(G.ggml_sum_rows(b.ctx, b.unary(G.ggml_sqr, centred).tensor), (c, 1)), 1.0 / count)
    normed = b.div(centred, b.unary(G.ggml_sqrt, b.scale(var, 1.0, node.attrs["eps"])))
    moved = (c, n, *inp.shape[2:])
    y = b.permute(b.reshape(normed, moved), (1, 0, *range(2, len(inp.shape))))
    if "weight" in x:
        y = b.mul(y, _channel(b, x["weight"], len(inp.shape)))
    if "bias" in x:
        y = b.add(y, _channel(b, x["bias"], len(inp.shape)))
    out = {"output": y}
    if "running_mean" in x:
        m = node.attrs["momentum"]
        unbiased = count / max(count - 1, 1)
        out["running_mean_out"] = b.add(b.scale(x["running_mean"], 1 - m), b.scale(b.reshape(mean, (c,)), m))
        out["running_var_out"] = b.add(b.scale(x["running_var"], 1 - m), b.scale(b.reshape(var, (c,)), m * unbiased))
    return {k: v for k, v in out.items() if k in node.outputs}


def _layer_norm(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    dims = node.attrs["normalized_shape"]
    if tuple(inp.shape[len(inp.shape) - len(dims) :]) != tuple(dims):
        raise ShapeError(f"ggml layer_norm {node.path!r}: input {list(inp.shape)} does not end in {list(dims)}")
    n = math.prod(dims)
    y = b.reshape(b.normalize_rows(b.reshape(inp, (math.prod(inp.shape) // n, n)), node.attrs["eps"]), inp.shape)
    if "weight" in x:
        y = b.mul(y, x["weight"])
    if "bias" in x:
        y = b.add(y, x["bias"])
    return y


def _embedding(b: Builder, node: Node, x: Inputs) -> T:
    w = x["weight"]
    edge = node.inputs["input"]
    shape = x["input"].shape
    size, rows = math.prod(shape), w.shape[0]

    def indices(idx: Any) -> tuple[np.ndarray, ...]:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding {node.path!r}: indices {edge.name!r} must be integers, got {idx.dtype}")
        if idx.size and (idx.min() < -rows or idx.max() >= rows):
            bad = idx[(idx < -rows) | (idx >= rows)].flat[0]
            raise IndexError(f"embedding {node.path!r}: index {int(bad)} is out of bounds for {rows} rows")
        return (np.where(idx < 0, idx + rows, idx).astype(np.int32).reshape(-1),)

    (idx,) = b.host_inputs(edge, [((size,), G.GGML_TYPE_I32)], indices)
    return b.reshape(T(G.ggml_get_rows(b.ctx, w.tensor, idx.tensor), (size, w.shape[1])), (*shape, w.shape[1]))


def _gelu(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    if node.attrs["approximate"] == "none":
        return b.unary(G.ggml_gelu_erf, inp)
    cube = b.mul(b.unary(G.ggml_sqr, inp), inp)
    inner = b.scale(b.add(inp, b.scale(cube, 0.044715)), math.sqrt(2.0 / math.pi))
    return b.mul(b.scale(inp, 0.5), b.scale(b.tanh(inner), 1.0, 1.0))


def _leaky_relu(b: Builder, node: Node, x: Inputs) -> T:
    inp, slope = x["input"], node.attrs["negative_slope"]
    if not b.grad:
        return b.unary(G.ggml_leaky_relu, inp, slope, False)
    negative = b.unary(G.ggml_relu, b.unary(G.ggml_neg, inp))
    return b.add(b.unary(G.ggml_relu, inp), b.scale(negative, -slope))


def _softmax_family(log: bool) -> Lowering:
    def lower(b: Builder, node: Node, x: Inputs) -> T:
        inp = x["input"]
        if not inp.shape:
            return b.scale(inp, 0.0) if log else b.scale(inp, 0.0, 1.0)
        moved, back = b.move_axis_last(inp, node.attrs["axis"])
        if log:
            y = b.log_softmax_last(moved)
        else:
            rows = b.reshape(moved, (math.prod(moved.shape[:-1]), moved.shape[-1]))
            y = b.reshape(b.unary(G.ggml_soft_max, rows), moved.shape)
        return b.permute(y, back)

    return lower


def _reduction(b: Builder, loss: T, reduction: str) -> T:
    if reduction == "none":
        return loss
    return b.reduce(loss, None, False, "mean" if reduction == "mean" else "sum")


def _mse_loss(b: Builder, node: Node, x: Inputs) -> T:
    diff = b.sub(x["input"], x["target"])
    return _reduction(b, b.unary(G.ggml_sqr, diff), node.attrs["reduction"])


def _cross_entropy(b: Builder, node: Node, x: Inputs) -> T:
    logits = x["input"]
    if len(logits.shape) < 2:
        raise ShapeError(f"ggml cross_entropy {node.path!r}: input must be [N, C, ...], got {list(logits.shape)}")
    c = logits.shape[1]
    weight, ignore = node.attrs["weight"], node.attrs["ignore_index"]
    smoothing, reduction = node.attrs["label_smoothing"], node.attrs["reduction"]
    w = np.ones(c, np.float32) if weight is None else np.asarray(weight, np.float32)
    bshape = (1, c) + (1,) * (len(logits.shape) - 2)

    def coefficients(t: Any) -> tuple[np.ndarray, ...]:
        t = np.asarray(t)
        if t.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy {node.path!r}: targets must be integers, got {t.dtype}")
        valid = t != ignore
        safe = np.where(valid, t, 0)
        if ((safe < 0) | (safe >= c)).any():
            bad = safe[(safe < 0) | (safe >= c)].flat[0]
            raise IndexError(f"cross_entropy: target {int(bad)} is out of range for {c} classes")
        wt = w[safe] * valid
        onehot = np.arange(c).reshape(bshape) == safe[:, None]
        coef = (1 - smoothing) * onehot * wt[:, None] + (smoothing / c) * w.reshape(bshape) * valid[:, None]
        with np.errstate(divide="ignore"):
            inv = np.asarray([1.0 / wt.sum()], np.float32)
        return coef.astype(np.float32), inv

    coef, inv = b.host_inputs(
        node.inputs["target"], [(logits.shape, G.GGML_TYPE_F32), ((1,), G.GGML_TYPE_F32)], coefficients
    )
    logp, back = b.move_axis_last(logits, 1)
    logp = b.permute(b.log_softmax_last(logp), back)
    loss = b.unary(G.ggml_neg, b.reduce(b.mul(logp, coef), 1, False, "sum"))
    if reduction == "mean":
        return b.reshape(b.mul(b.reduce(loss, None, False, "sum"), inv), ())
    return _reduction(b, loss, reduction)


def _dropout(b: Builder, node: Node, x: Inputs) -> dict[str, T]:
    inp, p = x["input"], node.attrs["p"]

    def draw(_: Any) -> tuple[np.ndarray, ...]:
        if p == 1.0:
            return (np.zeros(inp.shape, np.float32),)
        return (((b.rng.random(inp.shape) >= p) / (1.0 - p)).astype(np.float32),)

    if p == 0.0:
        mask = b.constant(np.ones(inp.shape, np.float32))
    else:
        (mask,) = b.host_inputs(None, [(inp.shape, G.GGML_TYPE_F32)], draw)
    out = {"output": b.mul(inp, mask), "mask": mask}
    return {k: v for k, v in out.items() if k in node.outputs}


def _flatten(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    span = flatten_span(node.attrs["start_dim"], node.attrs["end_dim"], len(inp.shape))
    if span is None:
        return b.reshape(inp, (1,))
    s, e = span
    return b.reshape(inp, (*inp.shape[:s], math.prod(inp.shape[s : e + 1]), *inp.shape[e + 1 :]))


def _reshape(b: Builder, node: Node, x: Inputs) -> T:
    inp, target = x["input"], node.attrs["shape"]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target = tuple(math.prod(inp.shape) // known if d == -1 else d for d in target)
    return b.reshape(inp, tuple(target))


def _transpose(b: Builder, node: Node, x: Inputs) -> T:
    inp, axes = x["input"], node.attrs["axes"]
    rank = len(inp.shape)
    return b.permute(inp, tuple(reversed(range(rank))) if axes is None else tuple(a % rank for a in axes))


def _extreme(sign: float) -> Lowering:
    """maximum/minimum as (a + b +- |a - b|) / 2: ties split the gradient like torch."""

    def lower(b: Builder, node: Node, x: Inputs) -> T:
        total = b.add(x["left"], x["right"])
        gap = b.unary(G.ggml_abs, b.sub(x["left"], x["right"]))
        return b.scale(b.add(total, b.scale(gap, sign)), 0.5)

    return lower


def _unary(fn: Callable[..., Any]) -> Lowering:
    return lambda b, node, x: b.unary(fn, x["input"])


def _reduce(kind: str) -> Lowering:
    return lambda b, node, x: b.reduce(x["input"], node.attrs["axis"], node.attrs["keepdim"], kind)


OPS: dict[str, Lowering] = {
    "linear": _linear,
    "relu": _unary(G.ggml_relu),
    "sigmoid": lambda b, node, x: b.sigmoid(x["input"]),
    "tanh": lambda b, node, x: b.tanh(x["input"]),
    "exp": _unary(G.ggml_exp),
    "log": _unary(G.ggml_log),
    "sqrt": _unary(G.ggml_sqrt),
    "abs": _unary(G.ggml_abs),
    "neg": _unary(G.ggml_neg),
    "square": _unary(G.ggml_sqr),
    "add": lambda b, node, x: b.add(x["left"], x["right"]),
    "sub": lambda b, node, x: b.sub(x["left"], x["right"]),
    "mul": lambda b, node, x: b.mul(x["left"], x["right"]),
    "div": lambda b, node, x: b.div(x["left"], x["right"]),
    "maximum": _extreme(1.0),
    "minimum": _extreme(-1.0),
    "matmul": _matmul,
    "sum": _reduce("sum"),
    "mean": _reduce("mean"),
    "max": _reduce("max"),
    "transpose": _transpose,
    "reshape": _reshape,
    "flatten": _flatten,
    "identity": lambda b, node, x: x["input"],
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "batch_norm": _batch_norm,
    "batch_norm_inference": _batch_norm_inference,
    "layer_norm": _layer_norm,
    "embedding": _embedding,
    "gelu": _gelu,
    "leaky_relu": _leaky_relu,
    "softmax": _softmax_family(log=False),
    "log_softmax": _softmax_family(log=True),
    "dropout": _dropout,
    "mse_loss": _mse_loss,
    "cross_entropy": _cross_entropy,
}


@dataclass(frozen=True)
class _Refusal:
    """Why a primitive with given attributes cannot run on ggml (or cannot be differentiated)."""

    test: Callable[[Node], bool]
    reason: str


# Attribute combinations ggml cannot run at all.
_FORWARD_REFUSALS: dict[str, _Refusal] = {
    "max_pool2d": _Refusal(
        lambda n: n.attrs["dilation"] != (1, 1) or n.attrs["ceil_mode"],
        "ggml's pool_2d has no dilation and no ceil_mode",
    ),
    "avg_pool2d": _Refusal(lambda n: n.attrs["ceil_mode"], "ggml's pool_2d has no ceil_mode"),
}

# Attribute combinations whose ggml lowering has no backward rule (ggml would abort).
GRAD_PROBLEMS: dict[str, _Refusal] = {
    "gelu": _Refusal(
        lambda n: n.attrs["approximate"] == "none",
        "ggml has no backward rule for the exact (erf) GELU; use GELU(approximate='tanh') to train on ggml",
    ),
    "conv2d": _Refusal(
        lambda n: n.attrs["groups"] > 1, "grouped convolution uses ggml's concat, which has no backward rule"
    ),
}


def check_node(node: Node) -> None:
    """Raise UnsupportedError, naming op and backend, when ggml cannot run `node`."""
    where = f"{node.primitive!r} (used by {node.path!r})"
    if node.primitive not in OPS:
        raise UnsupportedError(f"backend 'ggml' has no implementation of {where}")
    refusal = _FORWARD_REFUSALS.get(node.primitive)
    if refusal is not None and refusal.test(node):
        raise UnsupportedError(f"backend 'ggml' cannot run {where}: {refusal.reason}")
