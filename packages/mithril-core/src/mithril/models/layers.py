"""The model catalogue: user-facing layers, each a leaf `Operator` over one primitive.

Argument names, defaults and parameter layouts follow the `torch.nn` namesakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Dropout",
    "LayerNorm",
    "Embedding",
    "GELU",
    "LeakyRelu",
    "Softmax",
    "LogSoftmax",
    "MSELoss",
    "CrossEntropyLoss",
    "Identity",
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
        checked = _axis("Transpose", axes)
        attrs = {"axes": None if checked is None else (checked,) if isinstance(checked, int) else checked}
        super().__init__(
            "transpose",
            {"input": DATA},
            {"input": ["...i"], "output": ["...o"]},
            attrs=attrs,
            rule=rules.transpose,
            name=name,
        )


class Reshape(Operator):
    """Reshape to `shape`; one entry may be -1."""

    def __init__(self, shape: Sequence[int], *, name: str | None = None) -> None:
        dims = tuple(shape)
        if not all(isinstance(d, int) and (d >= 0 or d == -1) for d in dims) or dims.count(-1) > 1:
            raise ValueError(f"Reshape: shape must be non-negative ints with at most one -1, got {shape!r}")
        super().__init__(
            "reshape",
            {"input": DATA},
            {"input": ["...i"], "output": ["...o"]},
            attrs={"shape": dims},
            rule=rules.reshape,
            name=name,
        )


class Flatten(Operator):
    """torch.nn.Flatten: merge dimensions start_dim..end_dim."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, name: str | None = None) -> None:
        _axis("Flatten", start_dim)
        _axis("Flatten", end_dim)
        super().__init__(
            "flatten",
            {"input": DATA},
            {"input": ["...i"], "output": ["...o"]},
            attrs={"start_dim": start_dim, "end_dim": end_dim},
            rule=rules.flatten,
            name=name,
        )


def _pair(owner: str, name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
    return (_check_int(owner, name, pair[0], minimum), _check_int(owner, name, pair[1], minimum))


class Conv2d(Operator):
    """torch.nn.Conv2d over [N, C, H, W]; weight [out, in/groups, kh, kw]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        name: str | None = None,
    ) -> None:
        cin = _check_int("Conv2d", "in_channels", in_channels, 1)
        cout = _check_int("Conv2d", "out_channels", out_channels, 1)
        groups = _check_int("Conv2d", "groups", groups, 1)
        if cin % groups or cout % groups:
            raise ValueError(f"Conv2d: in_channels {cin} and out_channels {cout} must be divisible by groups {groups}")
        kh, kw = _pair("Conv2d", "kernel_size", kernel_size, 1)
        stride_ = _pair("Conv2d", "stride", stride, 1)
        dilation_ = _pair("Conv2d", "dilation", dilation, 1)
        if padding == "valid":
            padding_ = (0, 0)
        elif padding == "same":
            if stride_ != (1, 1):
                raise ValueError("Conv2d: padding='same' needs stride 1 (as in PyTorch)")
            totals = (dilation_[0] * (kh - 1), dilation_[1] * (kw - 1))
            if any(t % 2 for t in totals):
                raise ValueError(
                    "Conv2d: padding='same' with an even kernel reach is not symmetric; give padding explicitly"
                )
            padding_ = (totals[0] // 2, totals[1] // 2)
        elif isinstance(padding, str):
            raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
        else:
            padding_ = _pair("Conv2d", "padding", padding, 0)
        inputs = {"input": DATA, "weight": KeySpec("param", init=Init("fan_in_uniform"))}
        template: dict[str, list[str | int | None]] = {
            "input": ["N", "C", "H", "W"],
            "weight": ["O", "Cg", kh, kw],
            "output": ["N", "O", "Ho", "Wo"],
        }
        if bias:
            inputs["bias"] = KeySpec("param", init=Init("fan_in_uniform", of="weight"))
            template["bias"] = ["O"]
        attrs = {
            "stride": stride_,
            "padding": padding_,
            "dilation": dilation_,
            "groups": groups,
            "kernel_size": (kh, kw),
        }
        super().__init__(
            "conv2d",
            inputs,
            template,
            sizes={"C": cin, "O": cout, "Cg": cin // groups},
            attrs=attrs,
            rule=rules.sliding_window,
            name=name,
        )


class _Pool2d(Operator):
    def __init__(
        self,
        primitive: str,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None,
        padding: int | Sequence[int],
        dilation: int | Sequence[int],
        ceil_mode: bool,
        extra: Mapping[str, object],
        name: str | None,
    ) -> None:
        owner = type(self).__name__
        kernel = _pair(owner, "kernel_size", kernel_size, 1)
        stride_ = kernel if stride is None else _pair(owner, "stride", stride, 1)
        padding_ = _pair(owner, "padding", padding, 0)
        if padding_[0] > kernel[0] // 2 or padding_[1] > kernel[1] // 2:
            raise ValueError(
                f"{owner}: padding {padding_} must be at most half of kernel_size {kernel} (as in PyTorch)"
            )
        attrs = {
            "kernel_size": kernel,
            "stride": stride_,
            "padding": padding_,
            "dilation": _pair(owner, "dilation", dilation, 1),
            "ceil_mode": bool(ceil_mode),
            **extra,
        }
        super().__init__(
            primitive,
            {"input": DATA},
            {"input": ["...", "H", "W"], "output": ["...", "Ho", "Wo"]},
            attrs=attrs,
            rule=rules.sliding_window,
            name=name,
        )


class MaxPool2d(_Pool2d):
    """torch.nn.MaxPool2d: padding counts as -inf; the gradient goes to the first maximum."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        ceil_mode: bool = False,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__("max_pool2d", kernel_size, stride, padding, dilation, ceil_mode, {}, name)


class AvgPool2d(_Pool2d):
    """torch.nn.AvgPool2d, with count_include_pad and divisor_override."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if divisor_override is not None:
            _check_int("AvgPool2d", "divisor_override", divisor_override, 1)
        extra = {"count_include_pad": bool(count_include_pad), "divisor_override": divisor_override}
        super().__init__("avg_pool2d", kernel_size, stride, padding, 1, ceil_mode, extra, name)


class BatchNorm2d(Operator):
    """torch.nn.BatchNorm2d: batch statistics in training, running statistics for inference.

    The running mean and variance are state (not parameters): compiled models keep
    and update them; inference=True compiles the running-statistics form.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        name: str | None = None,
    ) -> None:
        c = _check_int("BatchNorm2d", "num_features", num_features, 1)
        inputs: dict[str, KeySpec] = {"input": DATA}
        template: dict[str, list[str | int | None]] = {"input": ["N", "C", "H", "W"], "output": ["N", "C", "H", "W"]}
        if affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
            inputs["bias"] = KeySpec("param", init=Init("zeros"))
            template["weight"] = template["bias"] = ["C"]
        outputs = {"output": "float"}
        updates: dict[str, str] = {}
        inference = None
        if track_running_stats:
            inputs["running_mean"] = KeySpec("state", init=Init("zeros"))
            inputs["running_var"] = KeySpec("state", init=Init("ones"))
            for key in ("running_mean", "running_var"):
                template[key] = template[key + "_out"] = ["C"]
                outputs[key + "_out"] = "float"
                updates[key + "_out"] = key
            inference = ("batch_norm_inference", tuple(inputs))
        super().__init__(
            "batch_norm",
            inputs,
            template,
            sizes={"C": c},
            outputs=outputs,
            attrs={"eps": float(eps), "momentum": float(momentum)},
            state_updates=updates,
            inference=inference,
            name=name,
        )


class Dropout(Operator):
    """torch.nn.Dropout: zeroes elements with probability p and scales by 1/(1-p) in training."""

    def __init__(self, p: float = 0.5, *, name: str | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        super().__init__(
            "dropout",
            {"input": DATA},
            {"input": ["..."], "output": ["..."], "mask": ["..."]},
            outputs={"output": "float", "mask": "float"},
            attrs={"p": float(p)},
            inference=("identity", ("input",)),
            name=name,
        )


class LayerNorm(Operator):
    """torch.nn.LayerNorm over the last len(normalized_shape) axes."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        name: str | None = None,
    ) -> None:
        dims = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        dims = tuple(_check_int("LayerNorm", "normalized_shape", d, 1) for d in dims)
        inputs: dict[str, KeySpec] = {"input": DATA}
        template: dict[str, list[str | int | None]] = {"input": ["...", *dims], "output": ["...", *dims]}
        if elementwise_affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
            template["weight"] = list(dims)
            if bias:
                inputs["bias"] = KeySpec("param", init=Init("zeros"))
                template["bias"] = list(dims)
        super().__init__("layer_norm", inputs, template, attrs={"normalized_shape": dims, "eps": float(eps)}, name=name)


class Embedding(Operator):
    """torch.nn.Embedding: rows of weight [num_embeddings, embedding_dim] picked by integer input."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, name: str | None = None) -> None:
        n = _check_int("Embedding", "num_embeddings", num_embeddings, 1)
        d = _check_int("Embedding", "embedding_dim", embedding_dim, 1)
        super().__init__(
            "embedding",
            {"input": KeySpec(kind="int"), "weight": KeySpec("param", init=Init("normal"))},
            {"input": ["..."], "weight": [n, d], "output": ["...", d]},
            name=name,
        )


class GELU(Operator):
    """torch.nn.GELU with approximate 'none' (erf) or 'tanh'."""

    def __init__(self, approximate: str = "none", *, name: str | None = None) -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        super().__init__("gelu", {"input": DATA}, UNARY_TEMPLATE, attrs={"approximate": approximate}, name=name)


class LeakyRelu(Operator):
    """torch.nn.LeakyReLU: x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, *, name: str | None = None) -> None:
        super().__init__(
            "leaky_relu", {"input": DATA}, UNARY_TEMPLATE, attrs={"negative_slope": float(negative_slope)}, name=name
        )


class _SoftmaxFamily(Operator):
    primitive_name = ""

    def __init__(self, dim: int = -1, *, name: str | None = None) -> None:
        _axis(type(self).__name__, dim)
        super().__init__(
            self.primitive_name,
            {"input": DATA},
            {"input": ["...i"], "output": ["...o"]},
            attrs={"axis": dim},
            rule=rules.same_shape_axis,
            name=name,
        )


class Softmax(_SoftmaxFamily):
    """torch.nn.Softmax(dim)."""

    primitive_name = "softmax"


class LogSoftmax(_SoftmaxFamily):
    """torch.nn.LogSoftmax(dim)."""

    primitive_name = "log_softmax"


def _reduction(owner: str, reduction: str) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{owner}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


class MSELoss(Operator):
    """torch.nn.MSELoss: (input - target)**2 reduced by `reduction`."""

    def __init__(self, reduction: str = "mean", *, name: str | None = None) -> None:
        red = _reduction("MSELoss", reduction)
        out: list[str | int | None] = ["..."] if red == "none" else []
        super().__init__(
            "mse_loss",
            {"input": DATA, "target": DATA},
            {"input": ["..."], "target": ["..."], "output": out},
            attrs={"reduction": red},
            name=name,
        )


class CrossEntropyLoss(Operator):
    """torch.nn.CrossEntropyLoss over logits [N, C, ...] and integer class targets [N, ...]."""

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        name: str | None = None,
    ) -> None:
        red = _reduction("CrossEntropyLoss", reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        weights = None if weight is None else tuple(float(w) for w in weight)
        template: dict[str, list[str | int | None]] = {
            "input": ["N", "C", "...d"] if weights is None else ["N", len(weights), "...d"],
            "target": ["N", "...d"],
            "output": ["N", "...d"] if red == "none" else [],
        }
        super().__init__(
            "cross_entropy",
            {"input": DATA, "target": KeySpec(kind="int")},
            template,
            attrs={
                "weight": weights,
                "ignore_index": int(ignore_index),
                "reduction": red,
                "label_smoothing": float(label_smoothing),
            },
            name=name,
        )


class Identity(_Unary):
    """Returns its input."""

    primitive_name = "identity"
