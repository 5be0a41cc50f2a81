"""Sequence layers: indexing, concatenation, splitting, gather, where, triangles and cumulative sums.

Arguments follow the torch functions of the same name (`torch.cat`, `torch.split`, `torch.chunk`,
`torch.gather`, `torch.where`, `torch.tril`, `torch.triu`, `torch.cumsum`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..primitives.indexing import FULL, IndexItem, index_text, normalize_index
from .base import KeySpec, Model, Operator
from .layers import Identity

__all__ = ["Index", "Concat", "Split", "Chunk", "Gather", "Where", "Tril", "Triu", "Cumsum"]


def _int(owner: str, name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{owner}: {name} must be an int{bound}, got {value!r}")
    return value


def _along(dim: int, item: IndexItem) -> tuple[IndexItem, ...]:
    """An index applying `item` on axis `dim` (negative: from the end) and keeping every other axis."""
    if dim >= 0:
        return (*[FULL] * dim, item)
    return ("...", item, *[FULL] * (-dim - 1))


class _IndexMeta(type):
    """Lets `Index[:, -1]` build the layer for that index."""

    def __getitem__(cls, index: Any) -> Index:
        return cls(index)


class Index(Operator, metaclass=_IndexMeta):
    """Basic indexing input[index] (ints, slices with any step, Ellipsis, None): `Index[:, -1]` or `Index(":, -1")`."""

    def __init__(self, index: Any, *, name: str | None = None) -> None:
        items = normalize_index(index, "Index")
        self.init_args = ((items,), {} if name is None else {"name": name})  # JSON-safe: the normalized items
        super().__init__("slice", attrs={"index": items}, name=name)

    def attr_text(self) -> str:
        return f"[{index_text(self.attrs['index'])}]"


class Concat(Model):
    """torch.cat((input0, ..., input{n-1}), dim): `n` inputs joined along `dim`."""

    def __init__(self, n: int = 2, dim: int = 0, *, name: str | None = None) -> None:
        super().__init__(name)
        _int("Concat", "n", n, 1)
        _int("Concat", "dim", dim)
        self.n, self.dim = n, dim
        if n == 1:
            self._add(Identity()(input="input0", output="output"), chain=False)
            return
        for i in range(1, n):
            last = {"output": "output"} if i == n - 1 else {}
            first = {"left": "input0"} if i == 1 else {}
            step = ConcatPair(dim)(**first, right=f"input{i}", **last)
            if i == 1:
                self._add(step, chain=False)
            else:
                self._add(step, chain=True)

    def attr_text(self) -> str:
        return f"n={self.n}, dim={self.dim}"


class _Pieces(Model):
    """Outputs output0..output{k-1}: slices of `input` along `dim`."""

    def __init__(self, items: Sequence[IndexItem], dim: int, name: str | None, text: str) -> None:
        super().__init__(name)
        self.text = text
        for i, item in enumerate(items):
            self._add(Index(_along(dim, item))(input="input", output=f"output{i}"), chain=False)
        self.cout = None  # the pieces are output0.., with no "output" alias

    def attr_text(self) -> str:
        return self.text


class Split(_Pieces):
    """torch.split(input, split_size_or_sections, dim); an int split size needs `num_outputs` (checked at compile)."""

    def __init__(
        self,
        split_size_or_sections: int | Sequence[int],
        dim: int = 0,
        *,
        num_outputs: int | None = None,
        name: str | None = None,
    ) -> None:
        _int("Split", "dim", dim)
        items: list[IndexItem] = []
        if isinstance(split_size_or_sections, int) and not isinstance(split_size_or_sections, bool):
            size = _int("Split", "split_size", split_size_or_sections, 1)
            if num_outputs is None:
                raise ValueError(
                    "Split: with an int split_size the number of pieces depends on the input's size; give "
                    "num_outputs= (it is checked against the size at compile time), or give the sections"
                )
            count = _int("Split", "num_outputs", num_outputs, 1)
            items = [("split", i, size, count) for i in range(count)]
        else:
            sections = [_int("Split", "each section", s, 0) for s in split_size_or_sections]  # type: ignore[union-attr]
            if not sections or (num_outputs is not None and num_outputs != len(sections)):
                raise ValueError(f"Split: sections {split_size_or_sections!r} must be non-empty (num_outputs aside)")
            total = sum(sections)
            starts = [sum(sections[:i]) for i in range(len(sections))]
            items = [("sections", start, start + s, total) for start, s in zip(starts, sections)]
        text = f"split_size_or_sections={split_size_or_sections!r}, dim={dim}"
        super().__init__(items, dim, name, text)


class Chunk(_Pieces):
    """torch.chunk(input, chunks, dim): outputs output0..output{chunks-1}; a size giving fewer chunks is refused."""

    def __init__(self, chunks: int, dim: int = 0, *, name: str | None = None) -> None:
        count = _int("Chunk", "chunks", chunks, 1)
        _int("Chunk", "dim", dim)
        super().__init__([("chunk", i, count) for i in range(count)], dim, name, f"chunks={chunks}, dim={dim}")


class Gather(Operator):
    """torch.gather(input, dim, index): int `index`, of the input's rank and no larger off `dim`."""

    def __init__(self, dim: int, *, name: str | None = None) -> None:
        super().__init__("gather", attrs={"axis": _int("Gather", "dim", dim)}, name=name)


class ConcatPair(Operator):
    """torch.cat((left, right), dim): the step Concat chains."""

    def __init__(self, dim: int = 0, *, name: str | None = None) -> None:
        super().__init__("concat", attrs={"axis": _int("Concat", "dim", dim)}, name=name)


class Select(Operator):
    """left where condition (any numeric kind) is nonzero, else right: the operator inside Where."""

    def __init__(self, *, name: str | None = None) -> None:
        specs = {"condition": KeySpec(kind="any"), "left": KeySpec(), "right": KeySpec()}
        super().__init__("where", specs, name=name)


class Where(Model):
    """torch.where(condition, input, other): `input` where condition is nonzero, else `other`; all broadcast."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name)
        self._add(Select()(condition="condition", left="input", right="other", output="output"), chain=False)


class Tril(Operator):
    """torch.tril(input, diagonal): zero above the diagonal-th diagonal of the last two axes."""

    def __init__(self, diagonal: int = 0, *, name: str | None = None) -> None:
        super().__init__("tril", attrs={"diagonal": _int("Tril", "diagonal", diagonal)}, name=name)


class Triu(Operator):
    """torch.triu(input, diagonal): zero below the diagonal-th diagonal of the last two axes."""

    def __init__(self, diagonal: int = 0, *, name: str | None = None) -> None:
        super().__init__("triu", attrs={"diagonal": _int("Triu", "diagonal", diagonal)}, name=name)


class Cumsum(Operator):
    """torch.cumsum(input, dim)."""

    def __init__(self, dim: int, *, name: str | None = None) -> None:
        super().__init__("cumsum", attrs={"axis": _int("Cumsum", "dim", dim)}, name=name)


# Operators that only composite layers use, registered for serialization by their class names.
PARTS: tuple[type[Operator], ...] = (ConcatPair, Select)
