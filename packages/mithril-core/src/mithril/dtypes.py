"""The core's dtype objects and the one promotion table every backend follows."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DType",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int32",
    "int64",
    "bool_",
    "ALL_DTYPES",
    "FLOAT_DTYPES",
    "promote",
    "as_dtype",
]


class DType:
    """A framework-neutral element type; backends map it to their own dtype."""

    __slots__ = ("name", "kind", "itemsize", "rank")

    def __init__(self, name: str, kind: str, itemsize: int, rank: int) -> None:
        self.name = name
        self.kind = kind  # "b" bool, "i" signed integer, "f" floating point
        self.itemsize = itemsize
        self.rank = rank  # position in the promotion lattice within its kind

    @property
    def is_floating(self) -> bool:
        return self.kind == "f"

    def __repr__(self) -> str:
        return f"ml.{self.name}"

    def __reduce__(self) -> str:
        return self.name if self.name != "bool" else "bool_"


float16: Final = DType("float16", "f", 2, 1)
bfloat16: Final = DType("bfloat16", "f", 2, 1)
float32: Final = DType("float32", "f", 4, 2)
float64: Final = DType("float64", "f", 8, 3)
int32: Final = DType("int32", "i", 4, 1)
int64: Final = DType("int64", "i", 8, 2)
bool_: Final = DType("bool", "b", 1, 0)

ALL_DTYPES: Final = (float16, bfloat16, float32, float64, int32, int64, bool_)
FLOAT_DTYPES: Final = (float16, bfloat16, float32, float64)
_BY_NAME: Final = {d.name: d for d in ALL_DTYPES}
_KIND_ORDER: Final = {"b": 0, "i": 1, "f": 2}


def promote(a: DType, b: DType) -> DType:
    """Result dtype of a binary op on `a` and `b` (PyTorch's rules for array operands).

    bool < integers < floats; within a kind the wider type wins; an integer meets a
    float and the float wins; float16 meets bfloat16 and both widen to float32.
    """
    if a is b:
        return a
    ka, kb = _KIND_ORDER[a.kind], _KIND_ORDER[b.kind]
    if ka != kb:
        return a if ka > kb else b
    if {a, b} == {float16, bfloat16}:
        return float32
    return a if a.rank >= b.rank else b


def as_dtype(value: object) -> DType:
    """Accept a DType or its name; anything else is a TypeError naming the choices."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    choices = ", ".join(f"ml.{d.name}" for d in ALL_DTYPES)
    raise TypeError(f"dtype must be one of {choices}; got {value!r}")
