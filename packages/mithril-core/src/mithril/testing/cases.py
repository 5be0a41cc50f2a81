"""One small model per primitive and catalogue layer, with inputs in each op's domain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import (
    Abs,
    Add,
    Divide,
    Exp,
    Flatten,
    Linear,
    Log,
    MatMul,
    Max,
    Maximum,
    Mean,
    Minimum,
    Model,
    Multiply,
    Negate,
    Power,
    Relu,
    Reshape,
    Sigmoid,
    Sqrt,
    Square,
    Subtract,
    Sum,
    Tanh,
    Transpose,
)
from ..models.base import BaseModel

__all__ = ["Case", "CASES"]


@dataclass
class Case:
    """A model exercising one primitive: its shapes and how to draw each input.

    `domain` maps an input key to "positive" (values in [0.5, 2]) or "any" (normal);
    `primitive` names the core primitive the case covers.
    """

    name: str
    primitive: str
    build: Callable[[], BaseModel]
    shapes: dict[str, list[int]]
    domain: dict[str, str] = field(default_factory=dict)
    grads: bool = True
    options: dict[str, Any] = field(default_factory=dict)


def _binary(layer: Callable[[], BaseModel]) -> Callable[[], BaseModel]:
    def build() -> BaseModel:
        model = Model()
        model |= layer()(left="left", right="right", output="output")
        return model

    return build


CASES: list[Case] = [
    Case("linear", "linear", lambda: Linear(5), {"input": [3, 4]}),
    Case("linear_3d_nobias", "linear", lambda: Linear(5, bias=False), {"input": [2, 3, 4]}),
    Case("relu", "relu", Relu, {"input": [3, 6]}),
    Case("sigmoid", "sigmoid", Sigmoid, {"input": [3, 6]}),
    Case("tanh", "tanh", Tanh, {"input": [3, 6]}),
    Case("exp", "exp", Exp, {"input": [3, 6]}),
    Case("abs", "abs", Abs, {"input": [3, 6]}),
    Case("neg", "neg", Negate, {"input": [3, 6]}),
    Case("square", "square", Square, {"input": [3, 6]}),
    Case("log", "log", lambda: Log(), {"input": [3, 4]}, {"input": "positive"}),
    Case("sqrt", "sqrt", lambda: Sqrt(), {"input": [3, 4]}, {"input": "positive"}),
    Case("add", "add", _binary(Add), {"left": [3, 4], "right": [4]}),
    Case("sub", "sub", _binary(Subtract), {"left": [2, 1, 4], "right": [3, 1]}),
    Case("mul", "mul", _binary(Multiply), {"left": [3, 4], "right": [3, 4]}),
    Case("div", "div", _binary(Divide), {"left": [3, 4], "right": [1, 4]}, {"right": "positive"}),
    Case("pow", "pow", _binary(Power), {"left": [3, 4], "right": [3, 4]}, {"left": "positive"}),
    Case("maximum", "maximum", _binary(Maximum), {"left": [3, 4], "right": [4]}),
    Case("minimum", "minimum", _binary(Minimum), {"left": [3, 4], "right": [3, 4]}),
    Case("matmul", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [4, 5]}),
    Case("matmul_batched", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [2, 4, 5]}),
    Case("matmul_vector", "matmul", _binary(MatMul), {"left": [4], "right": [2, 4, 3]}),
    Case("sum_all", "sum", lambda: Sum(), {"input": [3, 4]}),
    Case("sum_axis", "sum", lambda: Sum(axis=1, keepdim=True), {"input": [3, 4, 2]}),
    Case("mean_axes", "mean", lambda: Mean(axis=(0, 2)), {"input": [3, 4, 2]}),
    Case("max_axis", "max", lambda: Max(axis=-1), {"input": [3, 5]}),
    Case("transpose", "transpose", lambda: Transpose(axes=(1, 2, 0)), {"input": [2, 3, 4]}),
    Case("transpose_reverse", "transpose", lambda: Transpose(), {"input": [2, 3]}),
    Case("reshape", "reshape", lambda: Reshape((4, -1)), {"input": [2, 3, 2]}),
    Case("flatten", "flatten", lambda: Flatten(), {"input": [2, 3, 2]}),
    Case("flatten_middle", "flatten", lambda: Flatten(start_dim=0, end_dim=1), {"input": [2, 3, 2]}),
]
