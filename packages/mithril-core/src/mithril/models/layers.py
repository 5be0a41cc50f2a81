"""The model catalogue: user-facing layers, each a leaf `Operator` over one primitive.

Argument names, defaults and parameter layouts follow the `torch.nn` namesakes.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import rules
from .base import Init, KeySpec, Operator

__all__ = [
    "Linear",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Negate",
    "Square",
    "Add",
    "Subtract",
    "Multiply",
    "Divide",
    "Power",
    "Maximum",
    "Minimum",
    "MatMul",
    "Sum",
    "Mean",
    "Max",
    "Transpose",
    "Reshape",
    "Flatten",
]

DATA = KeySpec()
UNARY_TEMPLATE = {"input": ["..."], "output": ["..."]}
BINARY_TEMPLATE: dict[str, list[str | int | None]] = {"left": ["...l"], "right": ["...r"], "output": ["...o"]}


def _check_int(owner: str, name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


class Linear(Operator):
    """y = input @ weight.T + bias, with weight stored [out, in] like torch.nn.Linear."""

    def __init__(self, dimension: int | None = None, bias: bool = True, *, name: str | None = None) -> None:
        if dimension is not None:
            _check_int("Linear", "dimension", dimension, 1)
        inputs = {"input": DATA, "weight": KeySpec("param", init=Init("fan_in_uniform"))}
        template: dict[str, list[str | int | None]] = {
            "input": ["...", "in"],
            "weight": ["out", "in"],
            "output": ["...", "out"],
        }
        if bias:
            inputs["bias"] = KeySpec("param", init=Init("fan_in_uniform", of="weight"))
            template["bias"] = ["out"]
        super().__init__(
            "linear", inputs, template, sizes={"out": dimension}, attrs={"dimension": dimension}, name=name
        )


class _Unary(Operator):
    primitive_name = ""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(self.primitive_name, {"input": DATA}, UNARY_TEMPLATE, name=name)


class Relu(_Unary):
    """max(input, 0)."""

    primitive_name = "relu"


class Sigmoid(_Unary):
    """1 / (1 + exp(-input))."""

    primitive_name = "sigmoid"


class Tanh(_Unary):
    """Hyperbolic tangent."""

    primitive_name = "tanh"


class Exp(_Unary):
    """Elementwise e**input."""

    primitive_name = "exp"


class Log(_Unary):
    """Elementwise natural logarithm."""

    primitive_name = "log"


class Sqrt(_Unary):
    """Elementwise square root."""

    primitive_name = "sqrt"


class Abs(_Unary):
    """Elementwise absolute value."""

    primitive_name = "abs"


class Negate(_Unary):
    """Elementwise -input."""

    primitive_name = "neg"


class Square(_Unary):
    """Elementwise input * input."""

    primitive_name = "square"


class _Binary(Operator):
    primitive_name = ""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(
            self.primitive_name,
            {"left": DATA, "right": DATA},
            BINARY_TEMPLATE,
            rule=rules.broadcast,
            name=name,
        )


class Add(_Binary):
    """left + right, broadcasting."""

    primitive_name = "add"


class Subtract(_Binary):
    """left - right, broadcasting."""

    primitive_name = "sub"


class Multiply(_Binary):
    """left * right, broadcasting."""

    primitive_name = "mul"


class Divide(_Binary):
    """left / right, broadcasting."""

    primitive_name = "div"


class Power(_Binary):
    """left ** right, broadcasting."""

    primitive_name = "pow"


class Maximum(_Binary):
    """Elementwise maximum, broadcasting."""

    primitive_name = "maximum"


class Minimum(_Binary):
    """Elementwise minimum, broadcasting."""

    primitive_name = "minimum"


class MatMul(Operator):
    """torch.matmul(left, right), batch dimensions broadcasting."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__("matmul", {"left": DATA, "right": DATA}, BINARY_TEMPLATE, rule=rules.matmul, name=name)


def _axis(owner: str, axis: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    if axis is None or (isinstance(axis, int) and not isinstance(axis, bool)):
        return axis
    if isinstance(axis, Sequence) and all(isinstance(a, int) and not isinstance(a, bool) for a in axis):
        return tuple(axis)
    raise TypeError(f"{owner}: axis must be None, an int or a sequence of ints, got {axis!r}")


class _Reduce(Operator):
    primitive_name = ""

    def __init__(
        self, axis: int | Sequence[int] | None = None, keepdim: bool = False, *, name: str | None = None
    ) -> None:
        attrs = {"axis": _axis(type(self).__name__, axis), "keepdim": bool(keepdim)}
        super().__init__(
            self.primitive_name,
            {"input": DATA},
            {"input": ["...i"], "output": ["...o"]},
            attrs=attrs,
            rule=rules.reduce,
            name=name,
        )


class Sum(_Reduce):
    """Sum over `axis` (all axes when None)."""

    primitive_name = "sum"


class Mean(_Reduce):
    """Mean over `axis` (all axes when None)."""

    primitive_name = "mean"


class Max(_Reduce):
    """Maximum over `axis` (all axes when None)."""

    primitive_name = "max"


class Transpose(Operator):
    """Permute axes; reverses them when `axes` is None (numpy.transpose)."""

    def __init__(self, axes: Sequence[int] | None = None, *, name: str | None = None) -> None:
        attrs = {"axes": None if axes is None else tuple(_axis("Transpose", axes) or ())}
        super().__init__(
            "transpose", {"input": DATA}, {"input": ["...i"], "output": ["...o"]},
            attrs=attrs, rule=rules.transpose, name=name,
        )


class Reshape(Operator):
    """Reshape to `shape`; one entry may be -1."""

    def __init__(self, shape: Sequence[int], *, name: str | None = None) -> None:
        dims = tuple(shape)
        if not all(isinstance(d, int) and (d >= 0 or d == -1) for d in dims) or dims.count(-1) > 1:
            raise ValueError(f"Reshape: shape must be non-negative ints with at most one -1, got {shape!r}")
        super().__init__(
            "reshape", {"input": DATA}, {"input": ["...i"], "output": ["...o"]},
            attrs={"shape": dims}, rule=rules.reshape, name=name,
        )


class Flatten(Operator):
    """torch.nn.Flatten: merge dimensions start_dim..end_dim."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, name: str | None = None) -> None:
        _axis("Flatten", start_dim)
        _axis("Flatten", end_dim)
        super().__init__(
            "flatten", {"input": DATA}, {"input": ["...i"], "output": ["...o"]},
            attrs={"start_dim": start_dim, "end_dim": end_dim}, rule=rules.flatten, name=name,
        )
