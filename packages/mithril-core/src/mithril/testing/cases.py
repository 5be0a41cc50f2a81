"""Conformance cases: one per example of every declared primitive, plus catalogue layers and kinks.

`PRIMITIVE_CASES` come from the declarations (`Primitive.examples`), so every primitive has
cases; `CASES` exercise each catalogue layer (its arguments, symbolic batches, composed
models) at smooth points, gradients included; `INFERENCE_CASES` compile layers for
inference; `KINK_CASES` sit on kinks (ties, zeros), where the gradient is the reference's
convention rather than a limit; `NONFINITE_CASES` rerun every deterministic primitive case
with NaN, +inf and -inf planted in its float inputs, which every backend must propagate as
torch does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Union

from ..models import (
    GELU,
    Abs,
    Add,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    CrossEntropyLoss,
    Divide,
    Dropout,
    Embedding,
    Exp,
    Flatten,
    GroupNorm,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    Log,
    LogSoftmax,
    MatMul,
    Max,
    Maximum,
    MaxPool1d,
    MaxPool2d,
    Mean,
    Minimum,
    Model,
    MSELoss,
    Multiply,
    Negate,
    Power,
    ReLU,
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Sqrt,
    Square,
    Subtract,
    Sum,
    Tanh,
    Transpose,
)
from ..models import attention as att
from ..models import sequence as seq
from ..models.base import BaseModel, KeySpec, Operator
from ..primitives import PRIMITIVES, Primitive
from ..primitives.examples import Example, Statistic

__all__ = [
    "Case",
    "CASES",
    "INFERENCE_CASES",
    "KINK_CASES",
    "NONFINITE_CASES",
    "PRIMITIVE_CASES",
    "SYMBOLIC_SIZE",
    "nonfinite_cases",
    "primitive_cases",
]

# The size drawn for a dimension a case leaves symbolic (None) at compile time.
SYMBOLIC_SIZE = 2


@dataclass
class Case:
    """A model exercising one primitive or layer: its shapes and how to draw each input.

    `shapes` may leave a dimension symbolic (None); it is drawn at `SYMBOLIC_SIZE`.
    `domain` maps an input key to a value domain of `mithril.primitives.examples.DOMAINS`;
    `int_inputs` gives int inputs their range: n for [0, n), or (low, high).
    `grads`: gradients are checked; `smooth`: finite differences apply at the drawn points.
    `train_inputs`: every float data input is trained too, so gradients cover it (layer
    cases; primitive cases declare their parameters). `statistic` checks random primitives.
    `primitive` names the primitive the case covers; `attrs` are its attributes.
    `nonfinite` names the float inputs that get NaN, +inf and -inf planted after drawing
    (`mithril.testing.plant_nonfinite`); outputs and gradients must then match the reference's,
    NaN for NaN and infinity for infinity. `planted` lists the inputs a nonfinite variant of
    the case would plant (`nonfinite_cases`; empty: no such variant).
    """

    name: str
    primitive: str
    build: Callable[[], BaseModel]
    shapes: dict[str, list[int | None]]
    domain: dict[str, str] = field(default_factory=dict)
    int_inputs: dict[str, Union[int, tuple[int, int]]] = field(default_factory=dict)
    grads: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    smooth: bool = True
    train_inputs: bool = True
    statistic: Statistic | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    nonfinite: tuple[str, ...] = ()
    planted: tuple[str, ...] = ()

    def int_range(self, key: str) -> tuple[int, int]:
        """The range [low, high) int input `key` is drawn from."""
        bound = self.int_inputs[key]
        return (0, bound) if isinstance(bound, int) else bound


def _role(decl: Primitive, key: str, grads: bool) -> KeySpec:
    """State stays state; differentiable float inputs are trained when gradients are checked; the rest are data."""
    if key in decl.state_updates.values():
        return KeySpec("state")
    return KeySpec("param" if grads and decl.differentiable(key) else "input", kind=decl.port(key).kind)


def _case_name(decl: Primitive, example: Example, suffix: str) -> str:
    name = "-".join(part for part in (decl.name, example.name, suffix) if part)
    return name.replace(" ", "")


def _planted(decl: Primitive, example: Example) -> tuple[str, ...]:
    """The float inputs a nonfinite case of `example` plants NaN and ±inf in (none for random primitives)."""
    if decl.random:
        return ()
    if example.nonfinite is not None:
        return tuple(example.nonfinite)
    return tuple(k for k in example.shapes if decl.port(k).kind == "float")


def primitive_cases(primitives: Sequence[Primitive]) -> list[Case]:
    """One case per example of each primitive and per combination of its swept attributes."""
    cases = []
    for decl in primitives:
        outputs = [k for k in decl.outputs if k not in decl.state_updates]
        for example in decl.examples:
            specs = {key: _role(decl, key, example.grads) for key in example.shapes}
            for suffix, attrs in example.variants():
                cases.append(
                    Case(
                        _case_name(decl, example, suffix),
                        decl.name,
                        partial(Operator, decl.name, specs, attrs=attrs),
                        {k: list(v) for k, v in example.shapes.items()},
                        dict(example.domain),
                        {k: example.int_range(k) for k in example.ints},
                        grads=example.grads,
                        options={"outputs": outputs} if len(outputs) > 1 else {},
                        smooth=example.smooth,
                        train_inputs=False,
                        statistic=example.statistic,
                        attrs={**decl.attrs, **attrs},
                        planted=_planted(decl, example),
                    )
                )
    return cases


def _binary(layer: Callable[[], BaseModel]) -> Callable[[], BaseModel]:
    def build() -> BaseModel:
        model = Model()
        model |= layer()(left="left", right="right", output="output")
        return model

    return build


def _conv_block() -> Model:
    """Conv1d, BatchNorm1d, SiLU, MaxPool1d, Flatten and Linear chained: decompositions meet in one graph."""
    model = Model()
    model |= Conv1d(2, 4, 3, padding=1)
    model += BatchNorm1d(4)
    model += SiLU()
    model += MaxPool1d(2)
    model += Flatten()
    model += Linear(3)
    return model


def nonfinite_cases(cases: Sequence[Case]) -> list[Case]:
    """Each case that plants inputs (`Case.planted`) again, with NaN and ±inf planted there; not smooth,
    so no finite differences."""
    return [
        replace(case, name=f"{case.name}-nonfinite", nonfinite=case.planted, smooth=False)
        for case in cases
        if case.planted
    ]


PRIMITIVE_CASES: list[Case] = primitive_cases(list(PRIMITIVES.values()))
NONFINITE_CASES: list[Case] = nonfinite_cases(PRIMITIVE_CASES)
POSITIVE_VAR = {"running_var": "positive"}
BLOCK_VAR = {"batchnorm1d_0.running_var": "positive"}

CASES: list[Case] = [
    Case("linear", "linear", lambda: Linear(5), {"input": [3, 4]}),
    Case("linear_3d_nobias", "linear", lambda: Linear(5, bias=False), {"input": [2, 3, 4]}),
    Case("linear_symbolic_batch", "linear", lambda: Linear(5), {"input": [None, 3, 4]}),
    Case("relu", "relu", ReLU, {"input": [3, 6]}),
    Case("leaky_relu", "leaky_relu", lambda: LeakyReLU(0.2), {"input": [3, 4]}),
    Case("sigmoid", "sigmoid", Sigmoid, {"input": [3, 6]}),
    Case("silu", "silu", SiLU, {"input": [3, 6]}),
    Case("gelu", "gelu", lambda: GELU(), {"input": [3, 4]}),
    Case("gelu_tanh", "gelu", lambda: GELU(approximate="tanh"), {"input": [3, 4]}),
    Case("tanh", "tanh", Tanh, {"input": [3, 6]}),
    Case("exp", "exp", Exp, {"input": [3, 6]}),
    Case("abs", "abs", Abs, {"input": [3, 6]}),
    Case("neg", "neg", Negate, {"input": [3, 6]}),
    Case("square", "square", Square, {"input": [3, 6]}),
    Case("identity", "identity", Identity, {"input": [3, 6]}),
    Case("log", "log", lambda: Log(), {"input": [3, 4]}, {"input": "positive"}),
    Case("sqrt", "sqrt", lambda: Sqrt(), {"input": [3, 4]}, {"input": "positive"}),
    Case("add", "add", _binary(Add), {"left": [3, 4], "right": [4]}),
    Case("add_symbolic_batch", "add", _binary(Add), {"left": [None, 3, 4], "right": [None, 3, 1]}),
    Case("sub", "sub", _binary(Subtract), {"left": [2, 1, 4], "right": [3, 1]}),
    Case("mul_broadcast", "mul", _binary(Multiply), {"left": [2, 3, 4], "right": [2, 3, 1]}),
    Case("div", "div", _binary(Divide), {"left": [3, 4], "right": [1, 4]}, {"right": "positive"}),
    Case("pow", "pow", _binary(Power), {"left": [3, 4], "right": [3, 4]}, {"left": "positive"}),
    Case("maximum", "maximum", _binary(Maximum), {"left": [3, 4], "right": [4]}),
    Case("minimum", "minimum", _binary(Minimum), {"left": [3, 4], "right": [3, 4]}),
    Case("matmul", "matmul", _binary(MatMul), {"left": [2, 3, 4], "right": [4, 5]}),
    Case("sum_axis", "sum", lambda: Sum(axis=1, keepdim=True), {"input": [3, 4, 2]}),
    Case("sum_axes_negative_keepdim", "sum", lambda: Sum(axis=(0, -1), keepdim=True), {"input": [3, 4, 2]}),
    Case("mean_axes", "mean", lambda: Mean(axis=(0, 2)), {"input": [3, 4, 2]}),
    Case("max_axis_keepdim", "max", lambda: Max(axis=1, keepdim=True), {"input": [3, 4, 2]}),
    Case("transpose", "transpose", lambda: Transpose(axes=(1, 2, 0)), {"input": [2, 3, 4]}),
    Case("reshape", "reshape", lambda: Reshape((4, -1)), {"input": [2, 3, 2]}),
    Case("flatten", "flatten", lambda: Flatten(), {"input": [2, 3, 2]}),
    Case("flatten_symbolic_batch", "flatten", lambda: Flatten(), {"input": [None, 3, 4]}),
    Case("conv1d", "conv", lambda: Conv1d(2, 4, 3, stride=2, padding=1), {"input": [2, 2, 7]}),
    Case("conv1d_same_depthwise", "conv", lambda: Conv1d(4, 4, 3, padding="same", groups=4), {"input": [2, 4, 6]}),
    Case("conv2d", "conv", lambda: Conv2d(3, 4, 3, padding=1), {"input": [2, 3, 5, 5]}),
    Case(
        "conv2d_strided_dilated",
        "conv",
        lambda: Conv2d(2, 4, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        {"input": [2, 2, 7, 6]},
    ),
    Case("conv2d_groups_nobias", "conv", lambda: Conv2d(4, 6, 3, groups=2, bias=False), {"input": [1, 4, 5, 5]}),
    Case("max_pool1d", "max_pool", lambda: MaxPool1d(3, stride=2, padding=1), {"input": [2, 3, 7]}),
    Case("max_pool2d", "max_pool", lambda: MaxPool2d(2), {"input": [2, 3, 4, 4]}),
    Case(
        "max_pool2d_padded",
        "max_pool",
        lambda: MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        {"input": [1, 2, 6, 5]},
    ),
    Case("avg_pool1d", "avg_pool", lambda: AvgPool1d(2), {"input": [2, 3, 6]}),
    Case("avg_pool2d", "avg_pool", lambda: AvgPool2d(2), {"input": [2, 3, 4, 4]}),
    Case(
        "avg_pool2d_padded_exclusive",
        "avg_pool",
        lambda: AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
        {"input": [1, 2, 6, 5]},
    ),
    Case("batch_norm1d", "batch_norm", lambda: BatchNorm1d(3), {"input": [4, 3]}, POSITIVE_VAR),
    Case(
        "batch_norm1d_sequence", "batch_norm", lambda: BatchNorm1d(3, momentum=0.3), {"input": [4, 3, 5]}, POSITIVE_VAR
    ),
    Case("batch_norm", "batch_norm", lambda: BatchNorm2d(3), {"input": [4, 3, 2, 2]}, POSITIVE_VAR),
    Case(
        "batch_norm_no_affine",
        "batch_norm",
        lambda: BatchNorm2d(3, affine=False, track_running_stats=False),
        {"input": [4, 3, 2, 2]},
    ),
    Case("group_norm", "group_norm", lambda: GroupNorm(2, 4), {"input": [2, 4, 3, 3]}),
    Case("group_norm_no_affine", "group_norm", lambda: GroupNorm(3, 6, affine=False), {"input": [2, 6, 4]}),
    Case("layer_norm", "layer_norm", lambda: LayerNorm((3, 4)), {"input": [2, 3, 4]}),
    Case("embedding", "embedding", lambda: Embedding(7, 3), {"input": [2, 5]}, int_inputs={"input": 7}),
    Case("index", "slice", lambda: seq.Index[1:, ..., ::-2, None], {"input": [3, 2, 5]}),
    Case("concat3", "concat", lambda: seq.Concat(3, dim=-1), {"input0": [2, 3], "input1": [2, 1], "input2": [2, 2]}),
    Case(
        "split",
        "slice",
        lambda: seq.Split([1, 3], dim=1),
        {"input": [2, 4]},
        options={"outputs": ["output0", "output1"]},
    ),
    Case("chunk", "slice", lambda: seq.Chunk(2), {"input": [5, 2]}, options={"outputs": ["output0", "output1"]}),
    Case("gather", "gather", lambda: seq.Gather(1), {"input": [3, 4], "index": [3, 5]}, int_inputs={"index": 4}),
    Case(
        "where_layer",
        "where",
        seq.Where,
        {"condition": [3, 4], "input": [3, 4], "other": [4]},
        domain={"condition": "ties"},
        smooth=False,
    ),
    Case("tril", "tril", lambda: seq.Tril(1), {"input": [2, 3, 4]}),
    Case("triu", "triu", lambda: seq.Triu(-1), {"input": [4, 3]}),
    Case("cumsum_layer", "cumsum", lambda: seq.Cumsum(0), {"input": [4, 3]}),
    Case("arange_like", "arange", lambda: att.Arange(dim=1), {"like": [2, 5]}, grads=False),
    Case(
        "sdpa_causal",
        "scaled_dot_product_attention",
        lambda: att.ScaledDotProductAttention(is_causal=True),
        {"query": [2, 3, 4], "key": [2, 3, 4], "value": [2, 3, 5]},
    ),
    Case(
        "attention_heads_gqa",
        "attention_heads",
        lambda: att.AttentionHeads(4, num_kv_heads=2, is_causal=True),
        {"query": [2, 3, 8], "key": [2, 3, 4], "value": [2, 3, 4]},
    ),
    Case("in_projection", "in_projection", lambda: att.InProjection(4, 1), {"input": [2, 3, 4]}),
    Case(
        "multihead_attention",
        "attention_heads",
        lambda: att.MultiheadAttention(4, 2, batch_first=True),
        {"query": [2, 3, 4], "key": [2, 3, 4], "value": [2, 3, 4]},
    ),
    Case("rms_norm_layer", "rms_norm", lambda: att.RMSNorm(4), {"input": [2, 3, 4]}),
    Case(
        "rotary_embedding_layer",
        "rotary_embedding",
        lambda: att.RotaryEmbedding(4, max_position_embeddings=8),
        {"input": [2, 3]},
        int_inputs={"input": 8},
        grads=False,
    ),
    Case(
        "apply_rotary_emb_layer",
        "apply_rotary_emb",
        lambda: att.ApplyRotaryEmb(),
        {"input": [2, 2, 3, 4], "cos": [2, 3, 4], "sin": [2, 3, 4]},
    ),
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
    Case("conv_block_symbolic_batch", "conv", _conv_block, {"input": [None, 2, 6]}, BLOCK_VAR),
]

# Layers compiled with inference=True, which swaps in their inference forms.
INFERENCE_CASES: list[Case] = [
    Case(
        "batch_norm_eval",
        "batch_norm_inference",
        lambda: BatchNorm2d(3),
        {"input": [4, 3, 2, 2]},
        POSITIVE_VAR,
        grads=False,
        options={"inference": True},
    ),
    Case("dropout_eval", "identity", lambda: Dropout(0.5), {"input": [3, 4]}, grads=False, options={"inference": True}),
    Case(
        "conv_block_eval",
        "conv",
        _conv_block,
        {"input": [None, 2, 6]},
        BLOCK_VAR,
        grads=False,
        options={"inference": True},
    ),
]

KINK_CASES: list[Case] = [
    Case("relu_at_zero", "relu", ReLU, {"input": [4, 6]}, {"input": "ties"}, smooth=False),
    Case(
        "leaky_relu_at_zero", "leaky_relu", lambda: LeakyReLU(0.1), {"input": [4, 6]}, {"input": "ties"}, smooth=False
    ),
    Case("abs_at_zero", "abs", Abs, {"input": [4, 6]}, {"input": "ties"}, smooth=False),
    Case(
        "maximum_ties",
        "maximum",
        _binary(Maximum),
        {"left": [4, 5], "right": [4, 5]},
        {"left": "ties", "right": "ties"},
        smooth=False,
    ),
    Case(
        "minimum_ties",
        "minimum",
        _binary(Minimum),
        {"left": [4, 5], "right": [4, 5]},
        {"left": "ties", "right": "ties"},
        smooth=False,
    ),
    Case("max_ties", "max", lambda: Max(axis=1), {"input": [4, 6]}, {"input": "ties"}, smooth=False),
    Case("max_all_ties", "max", lambda: Max(axis=None), {"input": [3, 4]}, {"input": "ties"}, smooth=False),
    Case(
        "max_pool2d_ties",
        "max_pool",
        lambda: MaxPool2d(2, stride=1),
        {"input": [1, 2, 5, 5]},
        {"input": "ties"},
        smooth=False,
    ),
]
