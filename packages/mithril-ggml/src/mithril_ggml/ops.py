"""How each core primitive becomes ggml graph nodes.

Tensors travel as `T` (a ggml tensor plus its NumPy shape; ggml stores dimensions
reversed). Every shape is checked here, in Python, before ggml sees it: a failed
ggml assertion aborts the process. Gradients never use ggml's own backward: the core
hands over a joint forward+backward graph of these same primitives.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import ggml.ggml as G
import numpy as np

from mithril.errors import IndexRangeError, ShapeError, UnsupportedError
from mithril.graph import Edge, Node
from mithril.models.rules import flatten_span, normalize_axes
from mithril.primitives.indexing import flat_positions, indexed_shape, resolve_index
from mithril.shapes import ShapeMismatch

__all__ = [
    "T",
    "Builder",
    "GGMLOp",
    "Quantized",
    "Refusal",
    "OPS",
    "ne4",
    "check_node",
    "node_budget",
    "prefers_out_prod",
]

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


# erf: a rational fit (odd numerator, even denominator in x^2, highest power first) for
# |x| < _ERF_SPLIT, and 1 - erfc(|x|) with erfc(z) = t exp(P(t) - z^2), t = 1 / (1 + z / 2)
# (Numerical Recipes' erfcc) above; both within 2e-7 of erf in float32.
_ERF_SPLIT = 0.75
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_ERFC = (
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
    -1.26551223,
)


@dataclass(frozen=True)
class Window:
    """Geometry of a 1-d or 2-d window op: spatial input `size`, output `out`, NumPy axis order."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    size: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.kernel)

    def ggml_args(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(stride, padding, dilation) pairs in ggml's order (width first; a 1-d window has height 1)."""
        if self.n == 1:
            return (self.stride[0], 1), (self.padding[0], 0), (self.dilation[0], 1)
        return (
            (self.stride[1], self.stride[0]),
            (self.padding[1], self.padding[0]),
            (self.dilation[1], self.dilation[0]),
        )


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
        host_tensor: Callable[..., Any],
        rng: np.random.Generator,
        transposed: dict[int, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self._host_tensor = host_tensor
        self.rng = rng
        self._transposed = transposed or {}

    def transposed_weight(self, w: T) -> Any:
        """A contiguous W^T tensor for weight `w` when one is stored for this graph."""
        return self._transposed.get(ctypes.addressof(w.tensor.contents))

    # -- tensors the host writes -----------------------------------------------------
    def constant(self, value: np.ndarray) -> T:
        """A float32 tensor holding `value`, written once after allocation."""
        arr = np.array(value, np.float32)
        return T(self._host_tensor(arr.shape, G.GGML_TYPE_F32, None, arr), arr.shape)

    def host_inputs(self, edge: Edge | None, specs: list[tuple[tuple[int, ...], int]], convert: HostConvert) -> list[T]:
        """Tensors computed on the host from input `edge` (or from nothing) before every run."""
        if edge is not None and edge.producer is not None and edge.producer.primitive == "arange":
            # positions from arange: fixed once this graph's shapes are (arange is 1-d: its length leads the specs)
            known, read = arange_values(edge.producer, specs[0][0][0]), convert
            edge, convert = None, lambda _: read(known)
        tensors = self._host_tensor(None, None, (edge, specs, convert), None)
        return [T(t, shape) for t, (shape, _) in zip(tensors, specs)]

    # -- layout --------------------------------------------------------------------
    def cont(self, x: T) -> T:
        if x.tensor is None:
            raise UnsupportedError("ggml: integer inputs live on the host and are read by one_hot and embedding only")
        return x if G.ggml_is_contiguous(x.tensor) else T(G.ggml_cont(self.ctx, x.tensor), x.shape)

    def strided(self, x: T) -> Any:
        """x's tensor for an op that reads any strides: the view a copy was made from, so the copy is not needed
        (dropped from the graph unless another node reads it); else x's tensor as it is."""
        if x.tensor is None:
            self.cont(x)  # raises: integer inputs live on the host
        tensor = x.tensor
        return tensor.contents.src[0] if tensor.contents.op == G.GGML_OP_CONT else tensor

    def rows(self, x: T) -> Any:
        """x's tensor as ggml_mul_mat's first operand, which reads each row contiguously and the rows by stride:
        the view a copy was made from when its rows are contiguous, else x's contiguous tensor."""
        view = self.strided(x)
        ok = view.contents.nb[0] == G.ggml_type_size(view.contents.type) and not G.ggml_is_transposed(view)
        return view if ok else self.cont(x).tensor

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
        view = G.ggml_permute(self.ctx, self.strided(x), *axes)  # a permuted copy: permute its source once
        return T(G.ggml_cont(self.ctx, view), tuple(x.shape[p] for p in perm))

    def repeat(self, x: T, shape: tuple[int, ...]) -> T:
        """Broadcast `x` to `shape` explicitly."""
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
        if ne4(a.shape) != ne4(out):
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
                # ggml's max skips NaN; torch's max of a row holding NaN is NaN
                nan = T(G.ggml_sum_rows(self.ctx, self.nan_carrier(rows).tensor), (rows.shape[0], 1))
                y = self.add(T(pooled, (rows.shape[0], 1)), nan)
            else:
                y = T(G.ggml_sum_rows(self.ctx, rows.tensor), (rows.shape[0], 1))
        if kind == "mean":
            y = self.scale(y, 1.0 / n)
        return self.reshape(y, out)

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

    # -- NaN-exact elementwise building blocks ---------------------------------------
    def clamp(self, x: T, low: float, high: float) -> T:
        """min(max(x, low), high), NaN -> high; on a copy, as ggml_clamp writes its input in place."""
        return T(G.ggml_clamp(self.ctx, G.ggml_dup(self.ctx, x.tensor), low, high), x.shape)

    def nan_carrier(self, x: T) -> T:
        """0 where `x` is a number (infinities included), NaN where it is NaN: sigmoid keeps only NaN, and costs
        a sixth of tanh (libm's tanhf is most of a small ReLU MLP's time otherwise)."""
        return self.scale(self.unary(G.ggml_sigmoid, x), 0.0)

    def is_nan(self, x: T) -> T:
        """1.0 where `x` is NaN, else 0.0: clamp sends NaN to its upper bound, step sends it to 0."""
        return self.mul(self.clamp(x, 0.0, 1.0), self.scale(self.unary(G.ggml_step, x), -1.0, 1.0))

    def greater(self, a: T, c: T) -> T:
        """1.0 where a > c, else 0.0 (NaN compares false): step(a - c), exact without flush-to-zero."""
        return self.unary(G.ggml_step, self.sub(a, c))

    def equal(self, a: T, c: T) -> T:
        """1.0 where a == c, else 0.0; equal infinities are equal, NaN equals nothing."""
        differ = self.add(self.greater(a, c), self.greater(c, a))
        return self.mul(self.scale(differ, -1.0, 1.0), self.scale(self.is_nan(self.add(a, c)), -1.0, 1.0))

    def select(self, mask: T, a: T, c: T) -> T:
        """`a` where mask is 1.0 and `c` where it is 0.0, copied exactly (no arithmetic on the values).

        Each element becomes a two-row slice [c, a]; argmax over the scores [1 - mask, mask]
        picks the row, which ggml_get_rows copies.
        """
        shape = tuple(np.broadcast_shapes(mask.shape, a.shape, c.shape))
        n = math.prod(shape)
        if n == 0:
            return self.repeat(a, shape)
        flat = [self.reshape(self.repeat(v, shape), (n, 1, 1)) for v in (c, a)]
        m = self.reshape(self.repeat(mask, shape), (n, 1))
        scores = T(G.ggml_concat(self.ctx, self.scale(m, -1.0, 1.0).tensor, m.tensor, 0), (n, 2))
        pick = G.ggml_reshape_2d(self.ctx, G.ggml_argmax(self.ctx, scores.tensor), 1, n)
        values = G.ggml_concat(self.ctx, flat[0].tensor, flat[1].tensor, 1)
        return self.reshape(T(G.ggml_get_rows(self.ctx, values, pick), (n, 1, 1)), shape)

    def recip(self, x: T) -> T:
        return self.div(self.constant(np.ones((), np.float32)), x)

    def polynomial(self, x: T, coefficients: tuple[float, ...]) -> T:
        """Horner's rule, highest power first."""
        y = self.scale(x, coefficients[0], coefficients[1])
        for c in coefficients[2:]:
            y = self.scale(self.mul(y, x), 1.0, c)
        return y

    def erf(self, x: T) -> T:
        """erf within 2e-7 of the exact value: a rational fit below |x| = 0.75, 1 - erfc above."""
        clipped = self.clamp(x, -4.0, 4.0)
        x2 = self.unary(G.ggml_sqr, clipped)
        small = self.div(self.mul(clipped, self.polynomial(x2, _ERF_P)), self.polynomial(x2, _ERF_Q))
        z = self.unary(G.ggml_abs, x)
        t = self.recip(self.scale(z, 0.5, 1.0))
        tail = self.mul(t, self.unary(G.ggml_exp, self.sub(self.polynomial(t, _ERFC), self.unary(G.ggml_sqr, z))))
        large = self.mul(self.unary(G.ggml_sgn, x), self.scale(tail, -1.0, 1.0))
        near = self.unary(G.ggml_step, self.scale(z, -1.0, _ERF_SPLIT))
        blended = self.add(self.mul(small, near), self.mul(large, self.scale(near, -1.0, 1.0)))
        return self.add(blended, self.nan_carrier(x))

    # -- windows (im2col) ------------------------------------------------------------
    def shape_tensor(self, shape: tuple[int, ...]) -> Any:
        """A float32 tensor of `shape` whose values are never read (ggml ops that take a shape from a tensor)."""
        return G.ggml_new_tensor(self.ctx, G.GGML_TYPE_F32, 4, (ctypes.c_int64 * 4)(*ne4(shape)))

    def im2col(self, x: T, w: Window) -> T:
        """[B, C, *S] -> [B, *O, C * prod(kernel)] with ggml's layout (channel-major, then kernel)."""
        kernel = self.shape_tensor((1, x.shape[1], *w.kernel))
        s, p, d = w.ggml_args()
        cols = G.ggml_im2col(self.ctx, kernel, self.cont(x).tensor, *s, *p, *d, w.n == 2, G.GGML_TYPE_F32)
        return T(cols, (x.shape[0], *w.out, x.shape[1] * math.prod(w.kernel)))

    def col2im(self, cols: T, shape: tuple[int, ...], w: Window) -> T:
        """The adjoint of `im2col`: window columns added back into a [B, C, *S] tensor."""
        kernel = self.shape_tensor((1, shape[1], *w.kernel))
        s, p, d = w.ggml_args()
        ne = (ctypes.c_int64 * 4)(*ne4(shape))
        return T(G.ggml_im2col_back(self.ctx, self.cont(cols).tensor, kernel, ne, *s, *p, *d, w.n == 2), shape)

    def pad(self, x: T, before: tuple[int, ...], after: tuple[int, ...]) -> T:
        """Zero padding of the last len(before) axes."""
        if not any(before) and not any(after):
            return x
        rank = len(x.shape)
        lo = [0] * rank
        hi = [0] * rank
        lo[rank - len(before) :], hi[rank - len(after) :] = before, after
        args = [v for i in reversed(range(rank)) for v in (lo[i], hi[i])] + [0] * (2 * (MAX_RANK - rank))
        shape = tuple(d + lo[i] + hi[i] for i, d in enumerate(x.shape))
        return T(G.ggml_pad_ext(self.ctx, self.cont(x).tensor, *args), shape)

    def crop(self, x: T, start: tuple[int, ...], shape: tuple[int, ...]) -> T:
        """x[..., start[0]:start[0] + shape[0], ...] over the last len(start) axes, contiguous."""
        if tuple(shape) == tuple(x.shape[len(x.shape) - len(shape) :]):
            return x
        x = self.cont(x)
        rank = len(x.shape)
        full = (*x.shape[: rank - len(shape)], *shape)
        first = (0,) * (rank - len(start)) + tuple(start)
        nb = x.tensor.contents.nb
        offset = sum(first[rank - 1 - i] * nb[i] for i in range(rank))
        view = G.ggml_view_4d(self.ctx, x.tensor, *ne4(full), nb[1], nb[2], nb[3], offset)
        return T(G.ggml_cont(self.ctx, view), full)

    def matmul_t(self, a: T, c: T) -> T:
        """c @ a^T over the last two axes, batched over a shared leading axis (ggml_mul_mat)."""
        return T(G.ggml_mul_mat(self.ctx, self.rows(a), self.cont(c).tensor), (*c.shape[:-1], a.shape[-2]))

    def normalize_rows(self, rows: T, eps: float) -> T:
        """(x - mean) / sqrt(var + eps) along the last axis of a 2-D tensor."""
        return T(G.ggml_norm(self.ctx, rows.tensor, eps), rows.shape)


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
    if any(b_ne[i] % a_ne[i] for i in (2, 3)):
        a, lmat = b.repeat(a, (*batch, m, k)), b.repeat(lmat, (*batch, n, k))
    y = T(G.ggml_mul_mat(b.ctx, b.rows(a), lmat.tensor), (*batch, n, m))
    final = (*batch, *((n,) if len(left.shape) > 1 else ()), *((m,) if len(right.shape) > 1 else ()))
    return b.reshape(y, final)


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
    size = math.prod(shape)
    (idx,) = b.host_inputs(edge, [((size,), G.GGML_TYPE_I32)], _index_converter(node, edge, w.shape[0]))
    return b.reshape(T(G.ggml_get_rows(b.ctx, w.tensor, idx.tensor), (size, w.shape[1])), (*shape, w.shape[1]))


def _gelu(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    if node.attrs["approximate"] == "none":
        return b.unary(G.ggml_gelu_erf, inp)
    cube = b.mul(b.unary(G.ggml_sqr, inp), inp)
    inner = b.scale(b.add(inp, b.scale(cube, 0.044715)), math.sqrt(2.0 / math.pi))
    return b.mul(b.scale(inp, 0.5), b.scale(b.unary(G.ggml_tanh, inner), 1.0, 1.0))


def _leaky_relu(b: Builder, node: Node, x: Inputs) -> T:
    """ggml_leaky_relu, with NaN propagated like torch (ggml's maps it to 0)."""
    inp = x["input"]
    return b.add(b.unary(G.ggml_leaky_relu, inp, node.attrs["negative_slope"], False), b.nan_carrier(inp))


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
    """Logits [C], [N, C] or [N, C, ...]; class indices (coefficients built on the host) or class
    probabilities (a float target shaped like the logits). A class whose coefficient is 0 is selected
    away, not multiplied, so a -inf log-probability there (extreme logits) stays out of the loss."""
    logits, target = x["input"], x["target"]
    if not logits.shape:
        raise ShapeError(f"ggml cross_entropy {node.path!r}: the logits need a class axis, got a scalar")
    one_row = len(logits.shape) == 1
    if one_row:
        logits = b.reshape(logits, (1, *logits.shape))
    c = logits.shape[1]
    weight, ignore = node.attrs["weight"], node.attrs["ignore_index"]
    smoothing, reduction = node.attrs["label_smoothing"], node.attrs["reduction"]
    w = np.ones(c, np.float32) if weight is None else np.asarray(weight, np.float32)
    bshape = (1, c) + (1,) * (len(logits.shape) - 2)
    logp, back = b.move_axis_last(logits, 1)
    logp = b.permute(b.log_softmax_last(logp), back)
    if node.inputs["target"].kind == "float":  # torch multiplies here, -inf * 0 giving NaN as it does
        t = b.reshape(target, logits.shape) if one_row else target
        t = b.scale(t, 1.0 - smoothing, smoothing / c) if smoothing else t
        terms = b.mul(logp, t) if weight is None else b.mul(b.mul(logp, t), b.constant(w.reshape(bshape)))
        loss = b.unary(G.ggml_neg, b.reduce(terms, 1, False, "sum"))
        if reduction == "mean":
            loss = b.reduce(loss, None, False, "mean")
    else:

        def coefficients(t: Any) -> tuple[np.ndarray, ...]:
            t = np.asarray(t).reshape(-1 if one_row else np.shape(t))
            if t.dtype.kind not in "iu":
                raise TypeError(f"cross_entropy {node.path!r}: targets must be integers, got {t.dtype}")
            _check_range(node, node.inputs["target"], t, c, "class", ignore)
            valid = t != ignore
            safe = np.where(valid, t, 0)
            wt = w[safe] * valid
            onehot = np.arange(c).reshape(bshape) == safe[:, None]
            coef = (1 - smoothing) * onehot * wt[:, None] + (smoothing / c) * w.reshape(bshape) * valid[:, None]
            with np.errstate(divide="ignore"):
                inv = np.asarray([1.0 / wt.sum()], np.float32)
            return coef.astype(np.float32), (coef != 0).astype(np.float32), inv

        coef, used, inv = b.host_inputs(
            node.inputs["target"],
            [(logits.shape, G.GGML_TYPE_F32), (logits.shape, G.GGML_TYPE_F32), ((1,), G.GGML_TYPE_F32)],
            coefficients,
        )
        terms = b.select(used, b.mul(logp, coef), b.constant(np.zeros((), np.float32)))
        loss = b.unary(G.ggml_neg, b.reduce(terms, 1, False, "sum"))
        if reduction == "mean":
            loss = b.reshape(b.mul(b.reduce(loss, None, False, "sum"), inv), ())
    if reduction == "sum":
        return b.reduce(loss, None, False, "sum")
    return b.reshape(loss, ()) if one_row and reduction == "none" else loss


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


# -- the core set: elementwise, comparison, broadcasting ---------------------------------------
def _scalar(b: Builder, node: Node, x: Inputs) -> T:
    return b.constant(np.asarray(node.attrs["value"], np.float32).reshape(()))


def _constant(b: Builder, node: Node, x: Inputs) -> T:
    shape = tuple(node.attrs["shape"])
    return b.constant(np.asarray(node.attrs["value"], np.float32).reshape(shape))


def _pow(b: Builder, node: Node, x: Inputs) -> T:
    """torch.pow as exp(right * log|left|), with the sign of odd integer powers of negative bases,
    NaN for other powers of finite negative bases (-inf ** 0.5 is inf, as in C), and C's ones:
    x ** 0 = 1, 1 ** y = 1 and (-1) ** ±inf = 1, NaN included."""
    base, power = x["left"], x["right"]
    shape = tuple(np.broadcast_shapes(base.shape, power.shape))
    zero, one = b.constant(np.zeros((), np.float32)), b.constant(np.ones((), np.float32))
    size = b.unary(G.ggml_exp, b.mul(power, b.unary(G.ggml_log, b.unary(G.ggml_abs, base))))
    negative = b.greater(zero, base)
    whole = b.equal(power, b.unary(G.ggml_round, power))
    even = b.equal(b.scale(b.unary(G.ggml_round, b.scale(power, 0.5)), 2.0), power)
    odd = b.mul(whole, b.scale(even, -1.0, 1.0))
    y = b.mul(size, b.scale(b.mul(negative, odd), -2.0, 1.0))
    inf = b.constant(np.full((), np.inf, np.float32))
    finite_negative = b.mul(negative, b.scale(b.equal(base, b.scale(inf, -1.0)), -1.0, 1.0))
    y = b.select(b.mul(finite_negative, b.scale(whole, -1.0, 1.0)), b.constant(np.full((), np.nan, np.float32)), y)
    y = b.select(b.equal(base, one), one, y)
    y = b.select(b.mul(b.equal(b.unary(G.ggml_abs, base), one), b.equal(b.unary(G.ggml_abs, power), inf)), one, y)
    return b.repeat(b.select(b.equal(power, zero), one, y), shape)


def _swapaxes(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    rank = len(inp.shape)
    perm = list(range(rank))
    i, j = node.attrs["axis0"] % rank, node.attrs["axis1"] % rank
    perm[i], perm[j] = perm[j], perm[i]
    return b.permute(inp, tuple(perm))


def _one_hot(b: Builder, node: Node, x: Inputs) -> T:
    edge, shape, classes = node.inputs["input"], x["input"].shape, node.attrs["num_classes"]

    def encode(idx: Any) -> tuple[np.ndarray, ...]:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"one_hot {node.path!r}: indices {edge.name!r} must be integers, got {idx.dtype}")
        return ((idx[..., None] == np.arange(classes)).astype(np.float32),)

    (out,) = b.host_inputs(edge, [((*shape, classes), G.GGML_TYPE_F32)], encode)
    return out


def _nan_kept(fn: Callable[..., Any]) -> Lowering:
    """A ggml unary op that maps NaN to a number (relu, sgn), with NaN propagated like torch."""

    def lower(b: Builder, node: Node, x: Inputs) -> T:
        return b.add(b.unary(fn, x["input"]), b.nan_carrier(x["input"]))

    return lower


def _where(b: Builder, node: Node, x: Inputs) -> T:
    cond = x["condition"]
    chosen = b.scale(b.equal(cond, b.constant(np.zeros((), np.float32))), -1.0, 1.0)
    return b.select(chosen, x["left"], x["right"])


def _reduced_shape(node: Node, like: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(axes, like's shape with 1 on the reduced axes, number of reduced elements) for `like`."""
    try:
        axes = normalize_axes(node.attrs["axis"], len(like))
    except ShapeMismatch as exc:
        raise ShapeError(f"ggml {node.primitive} {node.path!r}: {exc}") from None
    kept = tuple(1 if i in axes else d for i, d in enumerate(like))
    return axes, kept, math.prod(like[i] for i in axes)


def _expand_reduced(b: Builder, node: Node, x: Inputs) -> T:
    inp, like = x["input"], x["like"].shape
    axes, kept, count = _reduced_shape(node, like)
    reduced = kept if node.attrs["keepdim"] else tuple(d for i, d in enumerate(like) if i not in axes)
    if tuple(inp.shape) != reduced:
        raise ShapeError(
            f"ggml expand_reduced {node.path!r}: input {list(inp.shape)} is not the reduction of {list(like)}"
        )
    y = b.repeat(b.reshape(inp, kept), like)
    return b.scale(y, 1.0 / count) if node.attrs["scale"] and count else y


def _broadcastable(node: Node, small: tuple[int, ...], big: tuple[int, ...]) -> None:
    if len(small) > len(big) or any(s not in (1, g) for s, g in zip(reversed(small), reversed(big))):
        raise ShapeError(f"ggml {node.primitive} {node.path!r}: {list(small)} does not broadcast to {list(big)}")


def _sum_like(b: Builder, node: Node, x: Inputs) -> T:
    inp, like = x["input"], x["like"].shape
    _broadcastable(node, like, inp.shape)
    if ne4(like) == ne4(inp.shape):
        return T(inp.tensor, like)
    return T(G.ggml_repeat_back(b.ctx, b.cont(inp).tensor, b.shape_tensor(like)), like)


def _expand_like(b: Builder, node: Node, x: Inputs) -> T:
    inp, like = x["input"], x["like"].shape
    _broadcastable(node, inp.shape, like)
    return b.repeat(inp, like)


# -- the core set: windows ----------------------------------------------------------------------
def _window_rank(node: Node) -> int:
    return len(node.attrs["stride"])


def _conv_window(node: Node, data: tuple[int, ...], weight: tuple[int, ...]) -> Window:
    """Check a conv's data [N, C, *S] and weight [O, C/groups, *K]; its window geometry."""
    n, groups = _window_rank(node), node.attrs["groups"]
    stride, padding, dilation = node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"]
    where = f"ggml {node.primitive} {node.path!r}"
    if len(data) != n + 2 or len(weight) != n + 2:
        raise ShapeError(f"{where}: input {list(data)} and weight {list(weight)} must have rank {n + 2}")
    if data[1] != weight[1] * groups or weight[0] % groups:
        raise ShapeError(f"{where}: input {list(data)} and weight {list(weight)} do not fit groups={groups}")
    size, kernel = tuple(data[2:]), tuple(weight[2:])
    out = tuple(
        (s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)
    )
    if any(o < 1 for o in out):
        raise ShapeError(f"{where}: kernel {list(kernel)} does not fit input {list(data)}")
    return Window(kernel, tuple(stride), tuple(padding), tuple(dilation), size, out)


def _group_cols(b: Builder, cols: T, groups: int) -> T:
    """im2col columns [N, *O, C*K] as [groups, N*P, C/groups*K]."""
    rows = math.prod(cols.shape[:-1])
    if groups == 1:
        return b.reshape(cols, (1, rows, cols.shape[-1]))
    return b.permute(b.reshape(cols, (rows, groups, cols.shape[-1] // groups)), (1, 0, 2))


def _conv(b: Builder, node: Node, x: Inputs) -> T:
    inp, w = x["input"], x["weight"]
    win = _conv_window(node, inp.shape, w.shape)
    groups, (n, o) = node.attrs["groups"], (inp.shape[0], w.shape[0])
    p = math.prod(win.out)
    cols = _group_cols(b, b.im2col(inp, win), groups)
    y = b.matmul_t(b.reshape(w, (groups, o // groups, cols.shape[-1])), cols)  # [G, N*P, O/G]
    y = b.permute(b.reshape(y, (groups, n, p, o // groups)), (1, 0, 3, 2))
    y = b.reshape(y, (n, o, *win.out))
    return b.add(y, b.reshape(x["bias"], (o,) + (1,) * win.n)) if "bias" in x else y


def _check_output_grad(node: Node, grad: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(grad) != tuple(want):
        raise ShapeError(f"ggml {node.primitive} {node.path!r}: output gradient {list(grad)}, expected {list(want)}")


def _conv_input_grad(b: Builder, node: Node, x: Inputs) -> T:
    gy, w, like = x["input"], x["weight"], x["like"].shape
    win = _conv_window(node, like, w.shape)
    groups, (n, o) = node.attrs["groups"], (like[0], w.shape[0])
    _check_output_grad(node, gy.shape, (n, o, *win.out))
    p, og = math.prod(win.out), o // groups
    rows = b.reshape(b.permute(b.reshape(gy, (n, groups, og, p)), (1, 0, 3, 2)), (groups, n * p, og))
    wt = b.permute(b.reshape(w, (groups, og, math.prod(w.shape[1:]))), (0, 2, 1))
    cols = b.permute(b.matmul_t(wt, rows), (1, 0, 2))  # [N*P, G, C/G*K]
    return b.col2im(b.reshape(cols, (n, *win.out, like[1] * math.prod(win.kernel))), like, win)


def _conv_weight_grad(b: Builder, node: Node, x: Inputs) -> T:
    gy, data, like = x["input"], x["data"], x["like"].shape
    win = _conv_window(node, data.shape, like)
    groups, (n, o) = node.attrs["groups"], (data.shape[0], like[0])
    _check_output_grad(node, gy.shape, (n, o, *win.out))
    p, og = math.prod(win.out), o // groups
    cols = b.permute(_group_cols(b, b.im2col(data, win), groups), (0, 2, 1))  # [G, C/G*K, N*P]
    grad = b.reshape(b.permute(b.reshape(gy, (n, groups, og, p)), (1, 2, 0, 3)), (groups, og, n * p))
    return b.reshape(b.matmul_t(cols, grad), like)


def _pool_window(node: Node, shape: tuple[int, ...]) -> tuple[Window, tuple[int, ...], tuple[int, ...]]:
    """A pool's window over the explicitly padded input, and the padding before and after each axis."""
    n = _window_rank(node)
    kernel, stride, padding = node.attrs["kernel_size"], node.attrs["stride"], node.attrs["padding"]
    dilation = node.attrs.get("dilation", (1,) * n)
    if len(shape) < n:
        raise ShapeError(f"ggml {node.primitive} {node.path!r}: input {list(shape)} has fewer than {n} axes")
    size, out, after = tuple(shape[len(shape) - n :]), [], []
    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation):
        span = d * (k - 1) + 1
        room = s + 2 * p - span
        if room < 0 or 2 * p > span:
            raise ShapeError(f"ggml {node.primitive} {node.path!r}: window {list(kernel)} does not fit {list(shape)}")
        o = (-(-room // st) if node.attrs["ceil_mode"] else room // st) + 1
        if (o - 1) * st >= s + p:
            o -= 1
        out.append(o)
        after.append(max((o - 1) * st + span - s - p, 0))
    padded = tuple(s + p + a for s, p, a in zip(size, padding, after))
    win = Window(tuple(kernel), tuple(stride), (0,) * n, tuple(dilation), padded, tuple(out))
    return win, tuple(padding), tuple(after)


def _pool_rows(b: Builder, x: T, n: int) -> T:
    """[..., *S] as [B, 1, *S] (the layout im2col and pool_2d take)."""
    lead = math.prod(x.shape[: len(x.shape) - n])
    return b.reshape(x, (lead, 1, *x.shape[len(x.shape) - n :]))


def _pool_padded(b: Builder, x: T, win: Window, before: tuple[int, ...], after: tuple[int, ...], fill: float) -> T:
    """`x` [B, 1, *S] padded before/after with `fill` (0 or -inf; the input's NaNs stay)."""
    y = b.pad(x, before, after)
    if fill and (any(before) or any(after)):
        mask = np.full(win.size, fill, np.float32)
        mask[tuple(slice(p, p + s) for p, s in zip(before, x.shape[2:]))] = 0.0
        y = b.add(y, b.constant(mask))
    return y


def _pool_2d_fits(node: Node, size: tuple[int, ...], win: Window) -> bool:
    """Whether ggml_pool_2d computes this pool directly: no dilation, and ceil_mode adds no window."""
    floor = [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, win.kernel, win.stride, node.attrs["padding"])]
    return all(d == 1 for d in win.dilation) and tuple(floor) == win.out


def _ggml_pool(b: Builder, rows: T, node: Node, win: Window, op: int) -> T:
    k, s, p = node.attrs["kernel_size"], node.attrs["stride"], node.attrs["padding"]
    if win.n == 1:
        args = (k[0], 1, s[0], 1, float(p[0]), 0.0)
    else:
        args = (k[1], k[0], s[1], s[0], float(p[1]), float(p[0]))
    return T(G.ggml_pool_2d(b.ctx, b.cont(rows).tensor, op, *args), (rows.shape[0], 1, *win.out))


def _max_pool(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    win, before, after = _pool_window(node, inp.shape)
    rows = _pool_rows(b, inp, win.n)
    if _pool_2d_fits(node, rows.shape[2:], win):
        # ggml's max skips NaN; the mean of the NaN carriers is NaN where torch's window max is
        nan = _ggml_pool(b, b.nan_carrier(rows), node, win, G.GGML_OP_POOL_AVG)
        y = b.add(_ggml_pool(b, rows, node, win, G.GGML_OP_POOL_MAX), nan)
    else:
        cols = b.im2col(_pool_padded(b, rows, win, before, after, -math.inf), win)
        y = b.reduce(cols, -1, False, "max")
    return b.reshape(y, (*inp.shape[: len(inp.shape) - win.n], *win.out))


def _max_pool_grad(b: Builder, node: Node, x: Inputs) -> T:
    gy, like = x["input"], x["like"]
    win, before, after = _pool_window(node, like.shape)
    lead = like.shape[: len(like.shape) - win.n]
    _check_output_grad(node, gy.shape, (*lead, *win.out))
    rows = _pool_rows(b, like, win.n)
    cols = b.im2col(_pool_padded(b, rows, win, before, after, -math.inf), win)
    peak = b.reduce(cols, -1, True, "max")
    at_peak = b.scale(b.unary(G.ggml_step, b.sub(peak, cols)), -1.0, 1.0)
    seen = T(G.ggml_cumsum(b.ctx, at_peak.tensor), at_peak.shape)
    first = b.mul(at_peak, b.unary(G.ggml_step, b.scale(seen, -1.0, 1.5)))
    # A window holding NaN sends its gradient to its last NaN, as torch: no NaN after it.
    nan = b.is_nan(cols)
    after = b.sub(b.reduce(nan, -1, True, "sum"), T(G.ggml_cumsum(b.ctx, nan.tensor), nan.shape))
    last_nan = b.mul(nan, b.scale(b.unary(G.ggml_step, b.scale(after, 1.0, -0.5)), -1.0, 1.0))
    in_nan = b.is_nan(peak)
    choice = b.add(b.mul(first, b.scale(in_nan, -1.0, 1.0)), b.mul(last_nan, in_nan))
    spread = b.mul(choice, b.reshape(gy, (*peak.shape[:-1], 1)))
    grad = b.col2im(spread, (rows.shape[0], 1, *win.size), win)
    return b.reshape(b.crop(grad, before, rows.shape[2:]), like.shape)


def _avg_divisor(node: Node, size: tuple[int, ...], win: Window) -> np.ndarray:
    """torch's divisor for each output window of an avg pool (shape `win.out`)."""
    override = node.attrs["divisor_override"]
    if override is not None:
        return np.full(win.out, float(override), np.float32)
    counts = []
    for s, k, st, p, o in zip(size, win.kernel, win.stride, node.attrs["padding"], win.out):
        start = np.arange(o) * st - p
        end = np.minimum(start + k, s + p)
        if not node.attrs["count_include_pad"]:
            start, end = np.maximum(start, 0), np.minimum(end, s)
        counts.append(end - start)
    divisor = counts[0].astype(np.float64)
    for c in counts[1:]:
        divisor = np.multiply.outer(divisor, c)
    return divisor.astype(np.float32)


def _avg_pool(b: Builder, node: Node, x: Inputs) -> T:
    inp = x["input"]
    win, before, after = _pool_window(node, inp.shape)
    size = inp.shape[len(inp.shape) - win.n :]
    rows = _pool_rows(b, inp, win.n)
    divisor = _avg_divisor(node, size, win)
    kernel = math.prod(win.kernel)
    if _pool_2d_fits(node, size, win):
        y = _ggml_pool(b, rows, node, win, G.GGML_OP_POOL_AVG)  # divides by the kernel size
        if (divisor != kernel).any():
            y = b.div(b.scale(b.reshape(y, (rows.shape[0], *win.out)), float(kernel)), b.constant(divisor))
    else:
        cols = b.im2col(_pool_padded(b, rows, win, before, after, 0.0), win)
        y = b.div(b.reshape(b.reduce(cols, -1, False, "sum"), (rows.shape[0], *win.out)), b.constant(divisor))
    return b.reshape(y, (*inp.shape[: len(inp.shape) - win.n], *win.out))


def _avg_pool_grad(b: Builder, node: Node, x: Inputs) -> T:
    gy, like = x["input"], x["like"].shape
    win, before, after = _pool_window(node, like)
    lead, size = like[: len(like) - win.n], like[len(like) - win.n :]
    _check_output_grad(node, gy.shape, (*lead, *win.out))
    count = math.prod(lead)
    share = b.div(b.reshape(gy, (count, *win.out)), b.constant(_avg_divisor(node, size, win)))
    spread = b.repeat(b.reshape(share, (count, *win.out, 1)), (count, *win.out, math.prod(win.kernel)))
    grad = b.col2im(spread, (count, 1, *win.size), win)
    return b.reshape(b.crop(grad, before, size), like)


# -- the core set: indices and randomness ------------------------------------------------------
def _check_range(node: Node, edge: Edge, values: np.ndarray, bound: int, what: str, allowed: int | None = None) -> None:
    """Raise IndexRangeError naming the key, the first bad value and the range unless all `values` are in
    [0, bound) (or equal `allowed`, e.g. an ignore_index): ggml would read a wrong row or NaN instead."""
    bad = (values < 0) | (values >= bound)
    if allowed is not None:
        bad &= values != allowed
    if bad.any():
        extra = "" if allowed is None else f" (or {allowed}, the ignore_index)"
        raise IndexRangeError(
            f"{node.primitive} {node.path!r}: {edge.name!r} holds {what} {int(values[bad].flat[0])}, outside the "
            f"valid range [0, {bound}){extra}"
        )


def _index_converter(node: Node, edge: Edge, rows: int) -> HostConvert:
    """Host conversion of embedding indices: checked against [0, rows), flattened to int32."""

    def indices(idx: Any) -> tuple[np.ndarray, ...]:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{node.primitive} {node.path!r}: indices {edge.name!r} must be integers, got {idx.dtype}")
        _check_range(node, edge, idx, rows, "index")
        return (idx.astype(np.int32).reshape(-1),)

    return indices


def _embedding_grad(b: Builder, node: Node, x: Inputs) -> T:
    gy, like = x["input"], x["like"].shape
    edge = node.inputs["indices"]
    shape = x["indices"].shape
    if len(like) != 2 or tuple(gy.shape) != (*shape, like[1]):
        raise ShapeError(
            f"ggml embedding_grad {node.path!r}: gradient {list(gy.shape)} does not fit indices "
            f"{list(shape)} and weight {list(like)}"
        )
    size = math.prod(shape)
    (idx,) = b.host_inputs(edge, [((size,), G.GGML_TYPE_I32)], _index_converter(node, edge, like[0]))
    rows = b.reshape(gy, (size, like[1]))
    return T(G.ggml_get_rows_back(b.ctx, rows.tensor, idx.tensor, b.shape_tensor(like)), like)


def _positions(b: Builder, positions: list[int]) -> T:
    """A constant int32 tensor of flat positions, for ggml_get_rows and its adjoint."""
    idx = np.asarray(positions, np.int32)
    (out,) = b.host_inputs(None, [(idx.shape, G.GGML_TYPE_I32)], lambda _: (idx,))
    return out


def _slice(b: Builder, node: Node, x: Inputs) -> T:
    """x[index]: a view when every step is 1, else the elements picked by their flat positions."""
    inp, index = x["input"], node.attrs["index"]
    shape = tuple(inp.shape)
    out = indexed_shape(index, shape)
    resolved = [r for r in resolve_index(index, shape) if r[0] != "new"]
    if all(r[0] == "int" or r[2] == 1 or r[3] <= 1 for r in resolved):
        start = tuple(r[1] for r in resolved)
        sizes = tuple(1 if r[0] == "int" else r[3] for r in resolved)
        return b.reshape(b.crop(inp, start, sizes), out)
    rows = b.reshape(inp, (math.prod(shape), 1))
    idx = _positions(b, flat_positions(index, shape))
    return b.reshape(T(G.ggml_get_rows(b.ctx, rows.tensor, idx.tensor), (math.prod(out), 1)), out)


def _slice_grad(b: Builder, node: Node, x: Inputs) -> T:
    """The cotangent written at like[index] into zeros (ggml_get_rows_back at the flat positions)."""
    g, like = x["input"], tuple(x["like"].shape)
    idx = _positions(b, flat_positions(node.attrs["index"], like))
    rows = b.reshape(g, (math.prod(g.shape), 1))
    full = (math.prod(like), 1)
    return b.reshape(T(G.ggml_get_rows_back(b.ctx, rows.tensor, idx.tensor, b.shape_tensor(full)), full), like)


def _concat(b: Builder, node: Node, x: Inputs) -> T:
    left, right = x["left"], x["right"]
    rank = len(left.shape)
    axis = normalize_axes(node.attrs["axis"], rank)[0]
    shape = tuple(d + right.shape[i] if i == axis else d for i, d in enumerate(left.shape))
    tensor = G.ggml_concat(b.ctx, b.strided(left), b.strided(right), rank - 1 - axis)
    return T(tensor, shape)


def _gather_positions(node: Node, edge: Edge, shape: tuple[int, ...], axis: int) -> HostConvert:
    """Host conversion of gather indices: checked against the axis size, turned into flat positions in `shape`."""

    def positions(idx: Any) -> tuple[np.ndarray, ...]:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{node.primitive} {node.path!r}: indices {edge.name!r} must be integers, got {idx.dtype}")
        _check_range(node, edge, idx, shape[axis], "index")
        grids = list(np.indices(idx.shape, sparse=True))
        grids[axis] = idx
        return (np.ravel_multi_index(np.broadcast_arrays(*grids), shape).astype(np.int32).reshape(-1),)

    return positions


def _gather(b: Builder, node: Node, x: Inputs) -> T:
    inp, edge, out = x["input"], node.inputs["index"], tuple(x["index"].shape)
    axis = normalize_axes(node.attrs["axis"], len(inp.shape))[0]
    size = math.prod(out)
    convert = _gather_positions(node, edge, tuple(inp.shape), axis)
    (idx,) = b.host_inputs(edge, [((size,), G.GGML_TYPE_I32)], convert)
    rows = b.reshape(inp, (math.prod(inp.shape), 1))
    return b.reshape(T(G.ggml_get_rows(b.ctx, rows.tensor, idx.tensor), (size, 1)), out)


def _gather_grad(b: Builder, node: Node, x: Inputs) -> T:
    g, edge, like = x["input"], node.inputs["index"], tuple(x["like"].shape)
    axis = normalize_axes(node.attrs["axis"], len(like))[0]
    size = math.prod(x["index"].shape)
    (idx,) = b.host_inputs(edge, [((size,), G.GGML_TYPE_I32)], _gather_positions(node, edge, like, axis))
    rows = b.reshape(g, (size, 1))
    full = (math.prod(like), 1)
    return b.reshape(T(G.ggml_get_rows_back(b.ctx, rows.tensor, idx.tensor, b.shape_tensor(full)), full), like)


def _cumsum(b: Builder, node: Node, x: Inputs) -> T:
    """ggml_cumsum runs along the innermost axis: move `axis` last and back."""
    moved, inverse = b.move_axis_last(x["input"], node.attrs["axis"])
    summed = T(G.ggml_cumsum(b.ctx, b.cont(moved).tensor), moved.shape)
    return b.permute(summed, inverse)


def _dropout_mask(b: Builder, node: Node, x: Inputs) -> T:
    shape, p = x["like"].shape, node.attrs["p"]
    if p == 0.0:
        return b.constant(np.ones(shape, np.float32))

    def draw(_: Any) -> tuple[np.ndarray, ...]:
        if p == 1.0:
            return (np.zeros(shape, np.float32),)
        return (((b.rng.random(shape) >= p) / (1.0 - p)).astype(np.float32),)

    (mask,) = b.host_inputs(None, [(shape, G.GGML_TYPE_F32)], draw)
    return mask


def _extreme(maximum: bool) -> Lowering:
    """maximum/minimum as torch: the winner copied exactly (infinities included), NaN where either
    operand is NaN (the left one by the select, the right one by its NaN carrier)."""

    def lower(b: Builder, node: Node, x: Inputs) -> T:
        left, right = x["left"], x["right"]
        right_wins = b.greater(right, left) if maximum else b.greater(left, right)
        return b.add(b.select(right_wins, right, left), b.nan_carrier(right))

    return lower


def _unary(fn: Callable[..., Any]) -> Lowering:
    return lambda b, node, x: b.unary(fn, x["input"])


def _reduce(kind: str) -> Lowering:
    return lambda b, node, x: b.reduce(x["input"], node.attrs["axis"], node.attrs["keepdim"], kind)


@dataclass(frozen=True)
class Refusal:
    """Why a primitive with given attributes cannot run on ggml."""

    test: Callable[[Node], bool]
    reason: str


@dataclass(frozen=True)
class Quantized:
    """An input whose parameter ggml can read in a smaller storage type than float32.

    `blocks_refused` says why Q8_0/Q4_0 blocks cannot be read ("{type}" is filled in; None: they
    can, for a last axis that is a multiple of 32); `calibrated_by` names the input whose rows meet
    the weight's rows, whose Gram matrix GPTQ calibration gathers (None: not calibrated).
    """

    key: str
    blocks_refused: str | None = None
    calibrated_by: str | None = None


@dataclass(frozen=True)
class GGMLOp:
    """One primitive on ggml, in one place: its lowering and what the program needs to know of it.

    build: the lowering. refuse: attribute values ggml cannot run, with the reason. nodes: an upper
    bound on the ggml nodes `build` emits (sizes the graph). quantized_inputs: inputs whose parameter
    may be stored quantized. transposed_input: an input whose float32 parameter `build` reads as a
    stored W^T copy when `prefers_out_prod` says so (gradient-free graphs only).
    """

    build: Lowering
    refuse: Refusal | None = None
    nodes: int = 48
    quantized_inputs: tuple[Quantized, ...] = ()
    transposed_input: str | None = None


_WINDOW_REFUSAL = Refusal(
    lambda n: _window_rank(n) not in (1, 2),
    "ggml's im2col covers 1-d and 2-d windows only (3-d windows need rank-5 tensors; ggml has at most 4 axes)",
)
_IM2COL_KERNEL = "the im2col convolution cannot read a {type} kernel"

OPS: dict[str, GGMLOp] = {
    "linear": GGMLOp(
        _linear, quantized_inputs=(Quantized("weight", calibrated_by="input"),), transposed_input="weight"
    ),
    "relu": GGMLOp(_nan_kept(G.ggml_relu)),
    "sigmoid": GGMLOp(_unary(G.ggml_sigmoid)),
    "tanh": GGMLOp(_unary(G.ggml_tanh)),
    "exp": GGMLOp(_unary(G.ggml_exp)),
    "log": GGMLOp(_unary(G.ggml_log)),
    "sqrt": GGMLOp(_unary(G.ggml_sqrt)),
    "abs": GGMLOp(_unary(G.ggml_abs)),
    "neg": GGMLOp(_unary(G.ggml_neg)),
    "square": GGMLOp(_unary(G.ggml_sqr)),
    "add": GGMLOp(lambda b, node, x: b.add(x["left"], x["right"])),
    "sub": GGMLOp(lambda b, node, x: b.sub(x["left"], x["right"])),
    "mul": GGMLOp(lambda b, node, x: b.mul(x["left"], x["right"])),
    "div": GGMLOp(lambda b, node, x: b.div(x["left"], x["right"])),
    "maximum": GGMLOp(_extreme(True), nodes=64),
    "minimum": GGMLOp(_extreme(False), nodes=64),
    "matmul": GGMLOp(_matmul),
    "sum": GGMLOp(_reduce("sum")),
    "mean": GGMLOp(_reduce("mean")),
    "max": GGMLOp(_reduce("max")),
    "transpose": GGMLOp(_transpose),
    "reshape": GGMLOp(_reshape),
    "flatten": GGMLOp(_flatten),
    "identity": GGMLOp(lambda b, node, x: x["input"]),
    "batch_norm": GGMLOp(_batch_norm),
    "batch_norm_inference": GGMLOp(_batch_norm_inference),
    "layer_norm": GGMLOp(_layer_norm),
    "embedding": GGMLOp(_embedding, quantized_inputs=(Quantized("weight"),)),  # get_rows dequantizes rows
    "gelu": GGMLOp(_gelu),
    "leaky_relu": GGMLOp(_leaky_relu),
    "softmax": GGMLOp(_softmax_family(log=False)),
    "log_softmax": GGMLOp(_softmax_family(log=True)),
    "dropout": GGMLOp(_dropout),
    "mse_loss": GGMLOp(_mse_loss),
    "cross_entropy": GGMLOp(_cross_entropy, nodes=128),
    "scalar": GGMLOp(_scalar),
    "constant": GGMLOp(_constant),
    "pow": GGMLOp(_pow, nodes=160),
    "swapaxes": GGMLOp(_swapaxes),
    "one_hot": GGMLOp(_one_hot),
    "sign": GGMLOp(_unary(G.ggml_sgn)),  # NaN -> 0, as torch.sign
    "erf": GGMLOp(lambda b, node, x: b.erf(x["input"]), nodes=128),
    "sin": GGMLOp(_unary(G.ggml_sin)),
    "cos": GGMLOp(_unary(G.ggml_cos)),
    "greater": GGMLOp(lambda b, node, x: b.greater(x["left"], x["right"])),
    "equal": GGMLOp(lambda b, node, x: b.equal(x["left"], x["right"]), nodes=64),
    "where": GGMLOp(_where, nodes=96),
    "expand_reduced": GGMLOp(_expand_reduced),
    "sum_like": GGMLOp(_sum_like),
    "expand_like": GGMLOp(_expand_like),
    "reshape_like": GGMLOp(lambda b, node, x: b.reshape(x["input"], x["like"].shape)),
    "conv": GGMLOp(
        _conv, refuse=_WINDOW_REFUSAL, nodes=64, quantized_inputs=(Quantized("weight", blocks_refused=_IM2COL_KERNEL),)
    ),
    "conv_input_grad": GGMLOp(_conv_input_grad, refuse=_WINDOW_REFUSAL, nodes=64),
    "conv_weight_grad": GGMLOp(_conv_weight_grad, refuse=_WINDOW_REFUSAL),
    "max_pool": GGMLOp(_max_pool, refuse=_WINDOW_REFUSAL, nodes=64),
    "max_pool_grad": GGMLOp(_max_pool_grad, refuse=_WINDOW_REFUSAL, nodes=160),
    "avg_pool": GGMLOp(_avg_pool, refuse=_WINDOW_REFUSAL),
    "avg_pool_grad": GGMLOp(_avg_pool_grad, refuse=_WINDOW_REFUSAL),
    "embedding_grad": GGMLOp(_embedding_grad),
    "dropout_mask": GGMLOp(_dropout_mask),
    "slice": GGMLOp(_slice),
    "slice_grad": GGMLOp(_slice_grad),
    "concat": GGMLOp(_concat),
    "gather": GGMLOp(_gather),
    "gather_grad": GGMLOp(_gather_grad),
    "cumsum": GGMLOp(_cumsum),
}


def node_budget(node: Node) -> int:
    """An upper bound on the ggml nodes `node`'s lowering emits."""
    return OPS[node.primitive].nodes + 8 * node.attrs.get("groups", 1)


def check_node(node: Node) -> None:
    """Raise UnsupportedError, naming op and backend, when ggml cannot run `node`."""
    where = f"{node.primitive!r} (used by {node.path!r})"
    op = OPS.get(node.primitive)
    if op is None:
        raise UnsupportedError(f"backend 'ggml' has no implementation of {where}")
    if op.refuse is not None and op.refuse.test(node):
        raise UnsupportedError(f"backend 'ggml' cannot run {where}: {op.refuse.reason}")


def arange_values(node: Node, length: int) -> np.ndarray:
    """The int64 values of an arange node whose output has `length` elements."""
    start, step = node.attrs["start"], node.attrs["step"]
    return np.arange(start, start + step * length, step, dtype=np.int64)[:length]


def _arange(b: Builder, node: Node, x: Inputs) -> T:
    """arange as a float32 constant for float consumers (masks); index consumers read its values on the host."""
    at = node.attrs
    if "like" in x:
        length = x["like"].shape[at["dim"]]
    else:
        length = len(range(at["start"], at["end"], at["step"]))
    return b.constant(arange_values(node, length).astype(np.float32))


OPS["arange"] = GGMLOp(_arange)
