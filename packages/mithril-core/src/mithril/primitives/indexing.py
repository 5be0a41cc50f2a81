"""Indexing and sequence primitives: basic indexing, concatenation, gather, cumulative sums, triangles.

`slice` takes Python/torch basic indexing (ints, slices with any step, Ellipsis, None) as a static
attribute `index`, a tuple of items: an int; None (a new axis); "..." (Ellipsis); (start, stop, step)
(a slice, each entry an int or None); ("chunk", i, chunks) (torch.chunk's i-th chunk), ("split", i,
size, count) (torch.split's i-th piece of `size`, of `count` pieces) or ("sections", start, stop, total)
(one of torch.split's sections, which must add up to the axis size `total`). The helpers here are pure Python,
so backends resolve an index against a concrete shape with them at compile or run time.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any, Union

from ..errors import UnsupportedError
from ..models import rules
from ..shapes import Dim, Item, ShapeMismatch, Var, resolve, unify
from .builder import Applied, Builder
from .declaration import Port, Primitive, declare
from .examples import Example

__all__ = [
    "IndexItem",
    "normalize_index",
    "index_text",
    "resolve_index",
    "positive_index",
    "expand_index",
    "indexed_shape",
    "resolve_slice",
    "flat_positions",
]

# One normalized index item (see the module docstring).
IndexItem = Union[int, None, str, tuple[Any, ...]]
# A resolved item: ("slice", start, step, length), ("int", i) or ("new",), one per output/input axis.
Resolved = tuple[Any, ...]
FULL = (None, None, None)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _item(value: object, owner: str) -> IndexItem:
    """One Python index item as its normalized form."""
    if value is None:
        return None
    if value is Ellipsis or value == "...":
        return "..."
    if _int(value):
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, slice):
        value = (value.start, value.stop, value.step)
    if isinstance(value, (tuple, list)) and value and value[0] in ("chunk", "split", "sections"):
        return tuple(value)
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(v is None or _int(v) for v in value):
        if value[2] == 0:
            raise ValueError(f"{owner}: slice step cannot be zero")
        return tuple(value)
    raise TypeError(f"{owner}: index items are ints, slices, Ellipsis (...) or None (basic indexing); got {value!r}")


def _parse(text: str, owner: str) -> Any:
    """A Python index from its source text, e.g. ':, -1' or '..., :64' (no evaluation)."""
    try:
        tree = ast.parse(f"_[{text.strip().strip('[]')}]", mode="eval").body
    except SyntaxError:
        raise ValueError(f"{owner}: cannot read index {text!r}; write it as between brackets, e.g. ':, -1'") from None
    assert isinstance(tree, ast.Subscript)

    def value(node: ast.expr | None) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and (node.value is None or node.value is Ellipsis or _int(node.value)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            operand = node.operand.value
            if isinstance(operand, int) and not isinstance(operand, bool):
                return -operand
        if isinstance(node, ast.Slice):
            return slice(value(node.lower), value(node.upper), value(node.step))
        raise ValueError(f"{owner}: index {text!r} may hold ints, slices, ... and None only")

    parts = tree.slice.elts if isinstance(tree.slice, ast.Tuple) else [tree.slice]
    return tuple(value(p) for p in parts)


def normalize_index(index: Any, owner: str = "Index") -> tuple[IndexItem, ...]:
    """A Python basic index (or its source text, e.g. ':, -1') as the `slice` primitive's attribute."""
    if isinstance(index, str) and index != "...":
        index = _parse(index, owner)
    items = index if isinstance(index, tuple) else (index,)
    out = tuple(_item(v, owner) for v in items)
    if sum(1 for v in out if v == "...") > 1:
        raise ValueError(f"{owner}: an index can only have a single ellipsis ('...'), got {index!r}")
    return out


def index_text(index: Sequence[IndexItem]) -> str:
    """The index as Python source, e.g. ':, -1'."""

    def one(v: IndexItem) -> str:
        if v is None:
            return "None"
        if isinstance(v, tuple) and v and v[0] in ("chunk", "split", "sections"):
            return repr(v)
        if isinstance(v, tuple):
            start, stop, step = ("" if x is None else str(x) for x in v)
            return f"{start}:{stop}" + (f":{step}" if step else "")
        return str(v)

    return ", ".join(one(v) for v in index)


def _consumes(item: IndexItem) -> bool:
    return item is not None and item != "..."


def expand_index(index: Sequence[IndexItem], rank: int) -> list[IndexItem]:
    """The index with its Ellipsis replaced by full slices (appended when absent)."""
    used = sum(1 for v in index if _consumes(v))
    if used > rank:
        raise ShapeMismatch(f"too many indices for a tensor of rank {rank}: [{index_text(index)}] indexes {used} axes")
    items = list(index)
    fill = [FULL] * (rank - used)
    if "..." in items:
        at = items.index("...")
        return [*items[:at], *fill, *items[at + 1 :]]
    return [*items, *fill]


def resolve_slice(item: tuple[Any, ...], size: int, axis: int) -> tuple[int, int, int]:
    """(start, step, length) of a slice item along an axis of `size`."""
    if item[0] == "chunk":
        _, i, chunks = item
        each = -(-size // chunks) if size else 0
        count = -(-size // each) if each else 0
        if i >= count:
            raise ShapeMismatch(
                f"torch.chunk splits axis {axis} of size {size} into {count} chunks of {each}, not {chunks}: "
                f"chunk {i} does not exist"
            )
        start = i * each
        return start, 1, min(each, size - start)
    if item[0] == "split":
        _, i, each, count = item
        got = -(-size // each)
        if got != count:
            raise ShapeMismatch(
                f"torch.split with split_size {each} splits axis {axis} of size {size} into {got} pieces, not {count}"
            )
        start = i * each
        return start, 1, min(each, size - start)
    if item[0] == "sections":
        _, start, stop, total = item
        if size != total:
            raise ShapeMismatch(f"torch.split's sections add up to {total}, but axis {axis} has size {size}")
        return start, 1, stop - start
    start, stop, step = slice(*item).indices(size)
    return start, step, len(range(start, stop, step))


def resolve_index(index: Sequence[IndexItem], shape: Sequence[int]) -> list[Resolved]:
    """Each item resolved against a concrete `shape`; ShapeMismatch for an index out of range."""
    out: list[Resolved] = []
    axis = 0
    for item in expand_index(index, len(shape)):
        if item is None:
            out.append(("new",))
            continue
        size = shape[axis]
        if isinstance(item, int):
            if not -size <= item < size:
                raise ShapeMismatch(f"index {item} is out of range for axis {axis} of size {size}")
            out.append(("int", item % size))
        else:
            out.append(("slice", *resolve_slice(item, size, axis)))  # type: ignore[arg-type]
        axis += 1
    return out


def indexed_shape(index: Sequence[IndexItem], shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of `x[index]` for x of `shape`."""
    return tuple(1 if r[0] == "new" else r[3] for r in resolve_index(index, shape) if r[0] != "int")


def positive_index(index: Sequence[IndexItem], shape: Sequence[int]) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """A Python index with positive steps only, and the output axes to flip after it (torch refuses
    negative steps): `x[index]` equals `flip(x[positive], axes)`."""
    items: list[Any] = []
    flips: list[int] = []
    out_axis = 0
    for r in resolve_index(index, shape):
        if r[0] == "new":
            items.append(None)
            out_axis += 1
        elif r[0] == "int":
            items.append(r[1])
        else:
            _, start, step, length = r
            if step > 0 or length <= 1:
                step = abs(step) if length > 1 else 1
                items.append(slice(start, start + step * (length - 1) + 1 if length else start, step))
            else:
                last = start + step * (length - 1)
                items.append(slice(last, start + 1, -step))
                flips.append(out_axis)
            out_axis += 1
    return tuple(items), tuple(flips)


def python_index(index: Sequence[IndexItem], shape: Sequence[int]) -> tuple[Any, ...]:
    """A Python index (any steps) equal to `index` on `shape`, for NumPy and JAX."""
    items: list[Any] = []
    for r in resolve_index(index, shape):
        if r[0] == "new":
            items.append(None)
        elif r[0] == "int":
            items.append(r[1])
        else:
            _, start, step, length = r
            stop = start + step * length
            items.append(slice(start, None if stop < 0 else stop, step))
    return tuple(items)


def flat_positions(index: Sequence[IndexItem], shape: Sequence[int]) -> list[int]:
    """The row-major positions in an array of `shape` that `x[index]` reads, in output order."""
    ranges: list[range] = []
    for r in resolve_index(index, shape):
        if r[0] == "int":
            ranges.append(range(r[1], r[1] + 1))
        elif r[0] == "slice":
            _, start, step, length = r
            ranges.append(range(start, start + step * length, step) if length else range(0))
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    positions = [0]
    for axis, rng in enumerate(ranges):
        positions = [p + i * strides[axis] for p in positions for i in rng]
    return positions


# -- shape rules --------------------------------------------------------------------------------
def _value(item: Item) -> int | None:
    return item.find().value if isinstance(item, Dim) else None


def _slice_rule(shapes: dict[str, Any], attrs: Any) -> bool:
    """x[index]: kept axes keep their dimension, sliced ones get the slice's length once known."""
    x = resolve(shapes["input"].items)
    if any(isinstance(d, Var) for d in x):
        return False
    index = attrs["index"]
    out: list[Item] = []
    done = True
    axis = 0
    for item in expand_index(index, len(x)):
        if item is None:
            out.append(Dim(1))
            continue
        size = _value(x[axis])
        if item == FULL:
            out.append(x[axis])
        elif size is None:
            done = False
            if not isinstance(item, int):
                out.append(Dim())
        elif isinstance(item, int):
            if not -size <= item < size:
                raise ShapeMismatch(f"index {item} is out of range for axis {axis} of size {size}")
        else:
            out.append(Dim(resolve_slice(item, size, axis)[2]))  # type: ignore[arg-type]
        axis += 1
    unify(shapes["output"].items, out)
    return done


def _slice_grad_rule(shapes: dict[str, Any], attrs: Any) -> bool:
    """The gradient is shaped like the slice of `like`; the output like `like`."""
    return _slice_rule({"input": shapes["like"], "output": shapes["input"]}, attrs)


def _axis_of(rank: int, axis: int) -> int:
    return rules.normalize_axes(axis, rank)[0]


def _concat_rule(shapes: dict[str, Any], attrs: Any) -> bool:
    """torch.cat of two tensors: equal ranks, equal sizes off `axis`, sizes added along it."""
    a, b = resolve(shapes["left"].items), resolve(shapes["right"].items)
    if any(isinstance(d, Var) for d in [*a, *b]):
        return False
    if len(a) != len(b):
        raise ShapeMismatch(f"cannot concatenate a rank-{len(a)} tensor with a rank-{len(b)} tensor")
    axis = _axis_of(len(a), attrs["axis"])
    for i, (da, db) in enumerate(zip(a, b)):
        if i != axis:
            unify([da], [db])
    na, nb = _value(a[axis]), _value(b[axis])
    total: Item = Dim(na + nb) if na is not None and nb is not None else Dim()
    unify(shapes["output"].items, [total if i == axis else d for i, d in enumerate(a)])
    return na is not None and nb is not None


def _gather_rule(shapes: dict[str, Any], attrs: Any) -> bool:
    """torch.gather: index of the input's rank, no larger than it off `axis`; the output shaped like index."""
    x, idx = resolve(shapes["input"].items), resolve(shapes["index"].items)
    if any(isinstance(d, Var) for d in [*x, *idx]):
        return False
    if len(x) != len(idx):
        raise ShapeMismatch(f"index has rank {len(idx)}, but gather needs the input's rank {len(x)}")
    axis = _axis_of(len(x), attrs["axis"])
    done = True
    for i, (dx, di) in enumerate(zip(x, idx)):
        vx, vi = _value(dx), _value(di)
        if i == axis:
            continue
        if vx is None or vi is None:
            done = False
        elif vi > vx:
            raise ShapeMismatch(f"index has size {vi} on axis {i}, larger than the input's {vx} (torch.gather)")
    return done


def _gather_grad_rule(shapes: dict[str, Any], attrs: Any) -> bool:
    return _gather_rule({"input": shapes["like"], "index": shapes["index"]}, attrs)


# -- gradient rules -----------------------------------------------------------------------------
def _slice_vjp(b: Builder, n: Applied) -> dict[str, object]:
    return {"input": b.slice_grad(n.g["output"], n["input"], index=n.attrs["index"])}


def _slice_grad_vjp(b: Builder, n: Applied) -> dict[str, object]:
    return {"input": b.slice(n.g["output"], index=n.attrs["index"])}


def _along(axis: int, item: tuple[Any, ...]) -> tuple[IndexItem, ...]:
    """An index applying `item` on `axis` (negative axes count from the end) and keeping the others."""
    if axis >= 0:
        return (*[FULL] * axis, item)
    return ("...", item, *[FULL] * (-axis - 1))


def _concat_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """Each side's part of the cotangent; needs the left size along `axis` at compile time."""
    left, axis, g = n["left"], n.attrs["axis"], n.g["output"]
    shape = resolve(left.shape.items)
    size = None
    if not any(isinstance(d, Var) for d in shape):
        size = _value(shape[_axis_of(len(shape), axis)])
    if size is None:
        raise UnsupportedError(
            f"{n.path}: the gradient of concat needs the size of its first input along axis {axis} at compile "
            "time; give ml.compile shapes="
        )
    out: dict[str, object] = {}
    if "left" in n.wanted:
        out["left"] = b.slice(g, index=_along(axis, (0, size, 1)))
    if "right" in n.wanted:
        out["right"] = b.slice(g, index=_along(axis, (size, None, 1)))
    return out


def _cumsum_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """The reversed cumulative sum of the cotangent: flip, cumsum, flip."""
    flip = _along(n.attrs["axis"], (None, None, -1))
    return {"input": b.slice(b.cumsum(b.slice(n.g["output"], index=flip), axis=n.attrs["axis"]), index=flip)}


def _triangle(lower: bool) -> Any:
    def decomposition(b: Builder, n: Applied) -> dict[str, object]:
        """Keep where col - row <= diagonal (tril) or >= diagonal (triu); row and col counted by cumsum."""
        x, k = n["input"], float(n.attrs["diagonal"])
        ones = b.expand_like(b.scalar(1.0), x)
        offset = b.sub(b.cumsum(ones, axis=-1), b.cumsum(ones, axis=-2))  # col - row
        keep = b.greater(b.scalar(k + 0.5), offset) if lower else b.greater(offset, b.scalar(k - 0.5))
        return {"output": b.where(keep, x, b.expand_like(b.scalar(0.0), x))}

    return decomposition


# -- declarations -------------------------------------------------------------------------------
ANY = {"input": ["...i"], "output": ["...o"]}
declare(
    Primitive(
        "slice",
        (Port("input"),),
        ANY,
        attrs={"index": ()},
        rule=_slice_rule,
        vjp=_slice_vjp,
        core=True,
        doc="Basic indexing x[index]: ints, slices with any step, Ellipsis and None (Python's rules).",
        examples=(
            Example(
                {"input": (3, 4, 5)},
                sweep={
                    "index": (
                        (FULL, -1),
                        ("...", (None, 2, None)),
                        ((1, None, 2), None, (None, None, -1)),
                        (-2, (3, 0, -2), "..."),
                        ((-5, 10, None), 0, (4, None, -3)),
                    )
                },
            ),
            Example({"input": (None, 4)}, attrs={"index": (FULL, (1, 3, None))}, name="symbolic"),
            Example({"input": (2, 3)}, attrs={"index": (1, 2)}, name="scalar"),
        ),
    )
)
declare(
    Primitive(
        "slice_grad",
        (Port("input"), Port("like", differentiable=False)),
        {"input": ["...i"], "like": ["...l"], "output": ["...l"]},
        attrs={"index": ()},
        rule=_slice_grad_rule,
        vjp=_slice_grad_vjp,
        core=True,
        doc="A zero array shaped like `like` holding `input` at like[index] (the gradient of slice).",
        examples=(
            Example({"input": (3, 4), "like": (3, 4, 5)}, attrs={"index": ((None, None, None), -1, (1, None, 1))}),
            Example(
                {"input": (2, 3), "like": (3, 5)}, attrs={"index": ((2, None, -2), (None, None, -2))}, name="steps"
            ),
            Example(
                {"input": (None, 2), "like": (None, 4)}, attrs={"index": ("...", (None, 2, None))}, name="symbolic"
            ),
        ),
    )
)
declare(
    Primitive(
        "concat",
        (Port("left"), Port("right")),
        {"left": ["...l"], "right": ["...r"], "output": ["...o"]},
        attrs={"axis": 0},
        rule=_concat_rule,
        vjp=_concat_vjp,
        core=True,
        doc="torch.cat((left, right), dim=axis).",
        examples=(
            Example({"left": (2, 3), "right": (2, 4)}, attrs={"axis": 1}),
            Example({"left": (2, 3, 2), "right": (1, 3, 2)}, sweep={"axis": (0,)}, name="first"),
            Example({"left": (2, 3, 2), "right": (2, 3, 1)}, attrs={"axis": -1}, name="last"),
            Example({"left": (None, 3), "right": (None, 2)}, attrs={"axis": 1}, name="symbolic"),
        ),
    )
)
declare(
    Primitive(
        "gather",
        (Port("input"), Port("index", kind="int", index_of=("input", "axis"))),
        {"input": ["...i"], "index": ["...x"], "output": ["...x"]},
        attrs={"axis": 0},
        rule=_gather_rule,
        vjp=lambda b, n: {"input": b.gather_grad(n.g["output"], n["index"], n["input"], axis=n.attrs["axis"])},
        core=True,
        doc="torch.gather(input, dim=axis, index): out[..., i, ...] = input[..., index[..., i, ...], ...].",
        examples=(
            Example({"input": (3, 4), "index": (3, 6)}, attrs={"axis": 1}, ints={"index": 4}),
            Example({"input": (5, 4), "index": (2, 3)}, attrs={"axis": 0}, ints={"index": 5}, name="smaller"),
            Example({"input": (2, 3, 4), "index": (2, 5, 4)}, attrs={"axis": -2}, ints={"index": 3}, name="middle"),
        ),
    )
)
declare(
    Primitive(
        "gather_grad",
        (Port("input"), Port("index", kind="int", index_of=("like", "axis")), Port("like", differentiable=False)),
        {"input": ["...x"], "index": ["...x"], "like": ["...l"], "output": ["...l"]},
        attrs={"axis": 0},
        rule=_gather_grad_rule,
        vjp=lambda b, n: {"input": b.gather(n.g["output"], n["index"], axis=n.attrs["axis"])},
        core=True,
        doc="Zeros shaped like `like` with `input` added at `index` along `axis` (torch's scatter_add).",
        examples=(
            Example({"input": (3, 6), "index": (3, 6), "like": (3, 4)}, attrs={"axis": 1}, ints={"index": 4}),
            Example({"input": (2, 3), "index": (2, 3), "like": (5, 4)}, ints={"index": 5}, name="smaller"),
        ),
    )
)
declare(
    Primitive(
        "cumsum",
        (Port("input"),),
        {"input": ["..."], "output": ["..."]},
        attrs={"axis": -1},
        rule=rules.same_shape_axis,
        vjp=_cumsum_vjp,
        core=True,
        doc="torch.cumsum(input, dim=axis).",
        examples=(
            Example({"input": (3, 4, 2)}, sweep={"axis": (0, 1, -1)}),
            Example({"input": (None, 5)}, attrs={"axis": 1}, name="symbolic"),
        ),
    )
)
for _name, _lower in (("tril", True), ("triu", False)):
    declare(
        Primitive(
            _name,
            (Port("input"),),
            {"input": ["...", "m", "n"], "output": ["...", "m", "n"]},
            attrs={"diagonal": 0},
            vjp=lambda b, n: {"input": b.emit(n.primitive, {"input": n.g["output"]}, n.attrs)["output"]},
            decomposition=_triangle(_lower),
            doc=f"torch.{_name}(input, diagonal) over the last two axes.",
            examples=(
                Example({"input": (4, 5)}, sweep={"diagonal": (-1, 0, 2)}),
                Example({"input": (2, 3, 3)}, name="batched"),
            ),
        )
    )
