"""One small model per primitive and catalogue layer, with inputs in each op's domain.

`CASES` are smooth where they are drawn, so finite differences check their gradients;
`KINK_CASES` sit on kinks (ties, zeros), where the gradient is the reference's convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import (
    GELU,
    Abs,
    Add,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Divide,
    Dropout,
    Embedding,
    Exp,
    Flatten,
    LayerNorm,
    LeakyRelu,
    Linear,
    Log,
    LogSoftmax,
    MatMul,
    Max,
    Maximum,
    MaxPool2d,
    Mean,
    Minimum,
    Model,
    MSELoss,
    Multiply,
    Negate,
    Power,
    Relu,
    Reshape,
    Sigmoid,
    Softmax,
    Sqrt,
    Square,
    Subtract,
    Sum,
    Tanh,
    Transpose,
)
from ..models.base import BaseModel

__all__ = ["Case", "CASES", "KINK_CASES", "SYMBOLIC_SIZE"]

# The size drawn for a dimension a case leaves symbolic (None) at compile time.
SYMBOLIC_SIZE = 2


@dataclass
class Case:
    """A model exercising one primitive: its shapes and how to draw each input.

    `shapes` may leave a dimension symbolic (None); it is drawn at `SYMBOLIC_SIZE`.
    `domain` maps an input key to "positive" (values in [0.5, 2]), "ties" (values in
    {-1, 0, 1}, so ties and zeros are common) or "any" (normal);
    `primitive` names the core primitive the case covers.
    """

    name: str
    primitive: str
    build: Callable[[], BaseModel]
    shapes: dict[str, list[int | None]]
    domain: dict[str, str] = field(default_factory=dict)
    int_inputs: dict[str, int] = field(default_factory=dict)  # key -> exclusive upper bound
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
    Case("linear_symbolic_batch", "linear", lambda: Linear(5), {"input": [None, 3, 4]}),
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
    Case("add_symbolic_batch", "add", _binary(Add), {"left": [None, 3, 4], "right": [None, 3, 1]}),
    Case("sub", "sub", _binary(Subtract), {"left": [2, 1, 4], "right": [3, 1]}),
    Case("mul", "mul", _binary(Multiply), {"left": [3, 4], "right": [3, 4]}),
    Case("mul_broadcast", "mul", _binary(Multiply), {"left": [2, 3, 4], "right": [2, 3, 1]}),
    Case("div", "div", _binary(Divide), {"left": [3, 4], "right": [1, 4]}, {"right": "positive"}),
    Case("pow", "pow", _binary(Power), {"left": [3, 4], "right": [3, 4]}, {"left": "positive"}),
    Case("pow_broadcast", "pow", _binary(Power), {"left": [3, 4], "right": [4]}, {"left": "positive"}),
    Case("maximum", "maximum", _binary(Maximum), {"left": [3, 4], "right": [4]}),
    Case("minimum", "minimum", _binary(Minimum), {"left": [3, 4], "right": [3, 4]}),
    Case("minimum_broadcast", "minimum", _binary(Minimum), {"left": [2, 3, 4], "right": [2, 3, 1]}),
    Case("matmul", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [4, 5]}),
    Case("matmul_batched", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [2, 4, 5]}),
    Case("matmul_vector", "matmul", _binary(MatMul), {"left": [4], "right": [2, 4, 3]}),
    Case("matmul_2d", "matmul", _binary(MatMul), {"left": [3, 4], "right": [4, 2]}),
    Case("matmul_vector_2d", "matmul", _binary(MatMul), {"left": [4], "right": [4, 3]}),
    Case("matmul_batched_vector", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [4]}),
    Case("sum_all", "sum", lambda: Sum(), {"input": [3, 4]}),
    Case("sum_axis", "sum", lambda: Sum(axis=1, keepdim=True), {"input": [3, 4, 2]}),
    Case("sum_axis_no_keepdim", "sum", lambda: Sum(axis=1), {"input": [3, 4, 2]}),
    Case("sum_all_keepdim", "sum", lambda: Sum(keepdim=True), {"input": [3, 4, 2]}),
    Case("sum_all_keepdim_symbolic_batch", "sum", lambda: Sum(keepdim=True), {"input": [None, 3, 4]}),
    Case("sum_axes_negative_keepdim", "sum", lambda: Sum(axis=(0, -1), keepdim=True), {"input": [3, 4, 2]}),
    Case("mean_axes", "mean", lambda: Mean(axis=(0, 2)), {"input": [3, 4, 2]}),
    Case("mean_last_axis", "mean", lambda: Mean(axis=-1), {"input": [3, 4, 2]}),
    Case("mean_all_keepdim", "mean", lambda: Mean(keepdim=True), {"input": [3, 4, 2]}),
    Case("mean_axes_keepdim", "mean", lambda: Mean(axis=(0, 2), keepdim=True), {"input": [3, 4, 2]}),
    Case("max_axis", "max", lambda: Max(axis=-1), {"input": [3, 5]}),
    Case("max_axis_keepdim", "max", lambda: Max(axis=1, keepdim=True), {"input": [3, 4, 2]}),
    Case("max_all", "max", lambda: Max(), {"input": [3, 4, 2]}),
    Case("max_all_keepdim", "max", lambda: Max(keepdim=True), {"input": [3, 4, 2]}),
    Case("max_axes", "max", lambda: Max(axis=(0, 2)), {"input": [3, 4, 2]}),
    Case("max_axes_symbolic_batch", "max", lambda: Max(axis=(0, 2)), {"input": [None, 3, 4]}),
    Case("transpose", "transpose", lambda: Transpose(axes=(1, 2, 0)), {"input": [2, 3, 4]}),
    Case("transpose_reverse", "transpose", lambda: Transpose(), {"input": [2, 3]}),
    Case("transpose_symbolic_batch", "transpose", lambda: Transpose(), {"input": [None, 3, 4]}),
    Case("reshape", "reshape", lambda: Reshape((4, -1)), {"input": [2, 3, 2]}),
    Case("flatten", "flatten", lambda: Flatten(), {"input": [2, 3, 2]}),
    Case("flatten_middle", "flatten", lambda: Flatten(start_dim=0, end_dim=1), {"input": [2, 3, 2]}),
    Case("flatten_all", "flatten", lambda: Flatten(start_dim=0), {"input": [2, 3, 2]}),
    Case("flatten_symbolic_batch", "flatten", lambda: Flatten(), {"input": [None, 3, 4]}),
    Case("conv2d", "conv2d", lambda: Conv2d(3, 4, 3, padding=1), {"input": [2, 3, 5, 5]}),
    Case(
        "conv2d_strided_dilated",
        "conv2d",
        lambda: Conv2d(2, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        {"input": [2, 2, 7, 6]},
    ),
    Case("conv2d_groups_nobias", "conv2d", lambda: Conv2d(4, 6, 3, groups=2, bias=False), {"input": [1, 4, 5, 5]}),
    Case("max_pool2d", "max_pool2d", lambda: MaxPool2d(2), {"input": [2, 3, 4, 4]}),
    Case(
        "max_pool2d_padded",
        "max_pool2d",
        lambda: MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        {"input": [1, 2, 6, 5]},
    ),
    Case("avg_pool2d", "avg_pool2d", lambda: AvgPool2d(2), {"input": [2, 3, 4, 4]}),
    Case(
        "avg_pool2d_padded_exclusive",
        "avg_pool2d",
        lambda: AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
        {"input": [1, 2, 6, 5]},
    ),
    Case("batch_norm", "batch_norm", lambda: BatchNorm2d(3), {"input": [4, 3, 2, 2]}),
    Case(
        "batch_norm_no_affine",
        "batch_norm",
        lambda: BatchNorm2d(3, affine=False, track_running_stats=False),
        {"input": [4, 3, 2, 2]},
    ),
    Case("layer_norm", "layer_norm", lambda: LayerNorm((3, 4)), {"input": [2, 3, 4]}),
    Case("embedding", "embedding", lambda: Embedding(7, 3), {"input": [2, 5]}, int_inputs={"input": 7}),
    Case("gelu", "gelu", lambda: GELU(), {"input": [3, 4]}),
    Case("gelu_tanh", "gelu", lambda: GELU(approximate="tanh"), {"input": [3, 4]}),
    Case("leaky_relu", "leaky_relu", lambda: LeakyRelu(0.2), {"input": [3, 4]}),
    Case("softmax", "softmax", lambda: Softmax(dim=1), {"input": [3, 4]}),
    Case("log_softmax", "log_softmax", lambda: LogSoftmax(dim=-1), {"input": [3, 4]}),
    Case("dropout_zero", "dropout", lambda: Dropout(0.0), {"input": [3, 4]}),
    Case("mse_loss", "mse_loss", lambda: MSELoss(), {"input": [3, 4], "target": [3, 4]}),
    Case("mse_loss_none", "mse_loss", lambda: MSELoss(reduction="none"), {"input": [3, 4], "target": [3, 4]}),
    Case(
        "cross_entropy",
        "cross_entropy",
        lambda: CrossEntropyLoss(),
        {"input": [5, 4], "target": [5]},
        int_inputs={"target": 4},
    ),
    Case(
        "cross_entropy_weighted_smoothed",
        "cross_entropy",
        lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.5], label_smoothing=0.1, ignore_index=1),
        {"input": [6, 4, 2], "target": [6, 2]},
        int_inputs={"target": 4},
    ),
]

KINK_CASES: list[Case] = [
    Case("relu_at_zero", "relu", Relu, {"input": [4, 6]}, {"input": "ties"}),
    Case("abs_at_zero", "abs", Abs, {"input": [4, 6]}, {"input": "ties"}),
    Case(
        "maximum_ties",
        "maximum",
        _binary(Maximum),
        {"left": [4, 5], "right": [4, 5]},
        {"left": "ties", "right": "ties"},
    ),
    Case(
        "minimum_ties",
        "minimum",
        _binary(Minimum),
        {"left": [4, 5], "right": [4, 5]},
        {"left": "ties", "right": "ties"},
    ),
    Case("max_ties", "max", lambda: Max(axis=1), {"input": [4, 6]}, {"input": "ties"}),
    Case("max_all_ties", "max", lambda: Max(axis=None), {"input": [3, 4]}, {"input": "ties"}),
]
