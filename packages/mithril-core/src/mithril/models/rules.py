"""Shape rules of primitives that a template cannot express (broadcasting, reductions, views)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..shapes import Dim, Item, Shape, ShapeMismatch, Var, render, resolve, unify

__all__ = [
    "broadcast",
    "broadcast3",
    "matmul",
    "reduce",
    "transpose",
    "reshape",
    "swapaxes",
    "flatten",
    "flatten_span",
    "normalize_axes",
    "sliding_window",
    "same_shape_axis",
    "window_out_size",
]

Shapes = dict[str, Shape]
Attrs = Mapping[str, Any]


def _has_var(items: Sequence[Item]) -> int:
    for i, item in enumerate(items):
        if isinstance(item, Var):
            return i
    return -1


def _text(items: Sequence[Item]) -> str:
    return render(items)


def _value(item: Item) -> int | None:
    return item.find().value if isinstance(item, Dim) else None


def _broadcast_fixed(a: Sequence[Item], b: Sequence[Item]) -> list[Item] | None:
    """Right-aligned broadcast of two fixed-rank shapes; None while a dimension is undecided."""
    n = max(len(a), len(b))
    pa: list[Item | None] = [None] * (n - len(a)) + list(a)
    pb: list[Item | None] = [None] * (n - len(b)) + list(b)
    out: list[Item] = []
    for x, y in zip(pa, pb):
        if x is None or y is None:
            out.append(x if y is None else y)  # type: ignore[arg-type]
            continue
        vx, vy = _value(x), _value(y)
        if x is y:
            out.append(x)
        elif vx == 1:
            out.append(y)
        elif vy == 1:
            out.append(x)
        elif vx is not None and vy is not None:
            if vx != vy:
                raise ShapeMismatch(f"cannot broadcast dimension {vx} with {vy}")
            out.append(x)
        else:
            return None
    return out


def broadcast(shapes: Shapes, attrs: Attrs) -> bool:
    """Elementwise binary op with NumPy/PyTorch broadcasting of `left` and `right`."""
    a, b = resolve(shapes["left"].items), resolve(shapes["right"].items)
    ia, ib = _has_var(a), _has_var(b)
    if ia >= 0 and ib >= 0:
        suf_a, suf_b = a[ia + 1 :], b[ib + 1 :]
        n = min(len(suf_a), len(suf_b))
        tail = _broadcast_fixed(suf_a[len(suf_a) - n :], suf_b[len(suf_b) - n :])
        if a[: ia + 1] == b[: ib + 1] and len(suf_a) == len(suf_b) and tail is not None:
            unify(shapes["output"].items, [*a[: ia + 1], *tail])
            return True
        return False
    if ia < 0 and ib < 0:
        items = _broadcast_fixed(a, b)
        if items is None:
            return False
        unify(shapes["output"].items, items)
        return True
    if ia < 0:
        a, b, ia = b, a, ib
    head, suffix = a[: ia + 1], a[ia + 1 :]
    if len(b) > len(suffix):
        return False
    cut = len(suffix) - len(b)
    tail = _broadcast_fixed(suffix[cut:], b)
    if tail is None:
        return False
    unify(shapes["output"].items, [*head, *suffix[:cut], *tail])
    return True


def broadcast3(shapes: Shapes, attrs: Attrs) -> bool:
    """`where`: condition, left and right broadcast together."""
    pair = Shape([Var()])
    if not broadcast({"left": shapes["condition"], "right": shapes["left"], "output": pair}, attrs):
        return False
    return broadcast({"left": pair, "right": shapes["right"], "output": shapes["output"]}, attrs)


def matmul(shapes: Shapes, attrs: Attrs) -> bool:
    """torch.matmul: [..., n, k] @ [..., k, m], with the 1-D cases."""
    left, out = shapes["left"].items, shapes["output"].items
    a, b = resolve(left), resolve(shapes["right"].items)
    if _has_var(b) >= 0:
        return False
    if not b:
        raise ShapeMismatch("right operand of matmul must have at least one dimension")
    if len(b) <= 2:
        batch, inner = Var(), b[0] if len(b) == 1 else b[-2]
        try:
            unify(left, [batch, inner])
        except ShapeMismatch:
            raise ShapeMismatch(
                f"cannot multiply left {_text(a)} by right {_text(b)}: inner dimensions differ"
            ) from None
        unify(out, [batch] if len(b) == 1 else [batch, b[-1]])
        return True
    if _has_var(a) >= 0:
        return False
    if not a:
        raise ShapeMismatch("left operand of matmul must have at least one dimension")
    unify([a[-1]], [b[-2]])
    if len(a) == 1:
        unify(out, [*b[:-2], b[-1]])
        return True
    batch_items = _broadcast_fixed(a[:-2], b[:-2])
    if batch_items is None:
        return False
    unify(out, [*batch_items, a[-2], b[-1]])
    return True


def normalize_axes(axis: int | Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """Axes as non-negative ints; ShapeMismatch when one is out of range."""
    if axis is None:
        return tuple(range(rank))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -rank <= ax < rank:
            raise ShapeMismatch(f"axis {ax} is out of range for rank {rank}")
        out.append(ax % rank)
    return tuple(sorted(set(out)))


def reduce(shapes: Shapes, attrs: Attrs) -> bool:
    """Reductions (sum, mean, max, ...) over `axis` with `keepdim`."""
    a = resolve(shapes["input"].items)
    out = shapes["output"].items
    axis, keepdim = attrs.get("axis"), attrs.get("keepdim", False)
    iv = _has_var(a)
    if iv >= 0:
        if axis is None and not keepdim:
            unify(out, [])
            return True
        axes = (axis,) if isinstance(axis, int) else tuple(axis or ())
        suffix = a[iv + 1 :]
        if axis is None or not all(-len(suffix) <= ax < 0 for ax in axes):
            return False
        negs = {len(suffix) + ax for ax in axes}
        kept = [Dim(1) if i in negs else d for i, d in enumerate(suffix) if keepdim or i not in negs]
        unify(out, [*a[: iv + 1], *kept])
        return True
    axes_set = set(normalize_axes(axis, len(a)))
    unify(out, [Dim(1) if i in axes_set else d for i, d in enumerate(a) if keepdim or i not in axes_set])
    return True


def transpose(shapes: Shapes, attrs: Attrs) -> bool:
    """Permute axes (reverse them when `axes` is None), like numpy.transpose."""
    a = resolve(shapes["input"].items)
    axes = attrs.get("axes")
    if _has_var(a) >= 0:
        if axes is None:
            return False
        unify(shapes["input"].items, [Dim() for _ in axes])
        a = resolve(shapes["input"].items)
    rank = len(a)
    perm = tuple(reversed(range(rank))) if axes is None else tuple(axes)
    if sorted(ax % rank if -rank <= ax < rank else -1 for ax in perm) != list(range(rank)):
        raise ShapeMismatch(f"axes {perm} are not a permutation of the axes of a rank-{rank} shape")
    unify(shapes["output"].items, [a[ax % rank] for ax in perm])
    return True


def swapaxes(shapes: Shapes, attrs: Attrs) -> bool:
    """Exchange axes `axis0` and `axis1` (negative axes count from the end, so any rank works)."""
    a = resolve(shapes["input"].items)
    i, j = attrs["axis0"], attrs["axis1"]
    iv = _has_var(a)
    if iv >= 0:
        suffix = a[iv + 1 :]
        if not (-len(suffix) <= i < 0 and -len(suffix) <= j < 0):
            return False
        swapped = list(suffix)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        unify(shapes["output"].items, [*a[: iv + 1], *swapped])
        return True
    rank = len(a)
    axes = normalize_axes((i,), rank) + normalize_axes((j,), rank)
    swapped = list(a)
    swapped[axes[0]], swapped[axes[1]] = swapped[axes[1]], swapped[axes[0]]
    unify(shapes["output"].items, swapped)
    return True


def reshape(shapes: Shapes, attrs: Attrs) -> bool:
    """Reshape to `shape`; one entry may be -1 and is inferred once the input size is known."""
    target: tuple[int, ...] = attrs["shape"]
    a = resolve(shapes["input"].items)
    known = [d for d in target if d != -1]
    if -1 not in target:
        unify(shapes["output"].items, [Dim(d) for d in target])
        if _has_var(a) < 0 and all(_value(d) is not None for d in a):
            size = math.prod(_value(d) or 0 for d in a)
            if size != math.prod(target):
                raise ShapeMismatch(f"cannot reshape {size} elements into {tuple(target)}")
        return _has_var(a) < 0 and all(_value(d) is not None for d in a)
    if _has_var(a) >= 0 or any(_value(d) is None for d in a):
        unify(shapes["output"].items, [Dim(d) if d != -1 else Dim() for d in target])
        return False
    size = math.prod(_value(d) or 0 for d in a)
    rest = math.prod(known)
    if rest == 0 or size % rest:
        raise ShapeMismatch(f"cannot reshape {size} elements into {tuple(target)}")
    unify(shapes["output"].items, [Dim(d if d != -1 else size // rest) for d in target])
    return True


def flatten_span(start_dim: int, end_dim: int, rank: int) -> tuple[int, int] | None:
    """The axes (first, last) that flatten merges in a rank-`rank` input; None for a scalar (becomes [1])."""
    if rank == 0:
        return None
    s, e = normalize_axes(start_dim, rank)[0], normalize_axes(end_dim, rank)[0]
    if s > e:
        raise ShapeMismatch(f"flatten start_dim {start_dim} comes after end_dim {end_dim} for rank {rank}")
    return s, e


def flatten(shapes: Shapes, attrs: Attrs) -> bool:
    """torch.flatten(input, start_dim, end_dim)."""
    a = resolve(shapes["input"].items)
    start, end = attrs["start_dim"], attrs["end_dim"]
    if _has_var(a) >= 0:
        return False
    span = flatten_span(start, end, len(a))
    if span is None:
        unify(shapes["output"].items, [Dim(1)])
        return True
    s, e = span
    values = [_value(d) for d in a[s : e + 1]]
    merged = Dim(math.prod(values)) if all(v is not None for v in values) else Dim()  # type: ignore[arg-type]
    if s == e:
        merged = a[s]  # type: ignore[assignment]
    unify(shapes["output"].items, [*a[:s], merged, *a[e + 1 :]])
    return all(v is not None for v in values) or s == e


def window_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool = False) -> int:
    """Output length of a sliding window (convolution, pooling), with PyTorch's ceil_mode rule."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1  # PyTorch: the last window must start inside the input or left padding
    return out


def sliding_window(shapes: Shapes, attrs: Attrs) -> bool:
    """Spatial output sizes of N-d convolution and pooling over the last n = len(stride) axes of `input`."""
    n = len(attrs["stride"])
    x = resolve(shapes["input"].items)
    out = resolve(shapes["output"].items)
    if _has_var(x) >= 0 or _has_var(out) >= 0 or len(x) < n:
        return False
    kernel = tuple(attrs["kernel_size"])
    dilation = attrs.get("dilation") or (1,) * n
    if "weight" in shapes:
        w = resolve(shapes["weight"].items)
        kernel = tuple(_value(d) for d in w[-n:])
    done = True
    for axis, dim in enumerate(x[-n:]):
        size = _value(dim)
        if size is None or kernel[axis] is None:
            done = False
            continue
        padded = size + 2 * attrs["padding"][axis]
        reach = dilation[axis] * (kernel[axis] - 1) + 1
        if reach > padded:
            raise ShapeMismatch(
                f"kernel reach {reach} (kernel_size {kernel[axis]}, dilation {dilation[axis]}) is larger "
                f"than the padded input size {padded} on spatial axis {axis}"
            )
        value = window_out_size(
            size,
            kernel[axis],
            attrs["stride"][axis],
            attrs["padding"][axis],
            dilation[axis],
            attrs.get("ceil_mode", False),
        )
        unify([out[len(out) - n + axis]], [Dim(value)])
    return done


def same_shape_axis(shapes: Shapes, attrs: Attrs) -> bool:
    """Output shape equals input shape; `axis` must be valid for its rank (softmax family)."""
    unify(shapes["output"].items, shapes["input"].items)
    x = resolve(shapes["input"].items)
    if _has_var(x) >= 0:
        return False
    normalize_axes(attrs["axis"], len(x))
    return True
