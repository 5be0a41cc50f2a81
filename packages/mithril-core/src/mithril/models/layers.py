"""The model catalogue: user-facing layers, each a leaf `Operator` over one primitive.

Argument names, defaults and parameter layouts follow the `torch.nn` namesakes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..shapes import Dim, Transaction, unify
from .base import Init, KeySpec, Operator

__all__ = [
    "Linear",
    "ReLU",
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
    "Conv1d",
    "Conv2d",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "GroupNorm",
    "SiLU",
    "Dropout",
    "LayerNorm",
    "Embedding",
    "GELU",
    "LeakyReLU",
    "LeakyRelu",
    "Softmax",
    "LogSoftmax",
    "MSELoss",
    "CrossEntropyLoss",
    "Identity",
]

DATA = KeySpec()


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
        if bias:
            inputs["bias"] = KeySpec("param", init=Init("fan_in_uniform", of="weight"))
        super().__init__("linear", inputs, sizes={"out": dimension}, attrs={"dimension": dimension}, name=name)


class _Unary(Operator):
    primitive_name = ""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(self.primitive_name, name=name)


class ReLU(_Unary):
    """torch.nn.ReLU: max(input, 0); NaN stays NaN."""

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
        super().__init__(self.primitive_name, name=name)


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
        super().__init__("matmul", name=name)


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
        super().__init__(self.primitive_name, attrs=attrs, name=name)


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
        super().__init__("transpose", attrs=attrs, name=name)


class Reshape(Operator):
    """Reshape to `shape`; one entry may be -1."""

    def __init__(self, shape: Sequence[int], *, name: str | None = None) -> None:
        dims = tuple(shape)
        if not all(isinstance(d, int) and (d >= 0 or d == -1) for d in dims) or dims.count(-1) > 1:
            raise ValueError(f"Reshape: shape must be non-negative ints with at most one -1, got {shape!r}")
        super().__init__("reshape", attrs={"shape": dims}, name=name)


class Flatten(Operator):
    """torch.nn.Flatten: merge dimensions start_dim..end_dim."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, name: str | None = None) -> None:
        _axis("Flatten", start_dim)
        _axis("Flatten", end_dim)
        super().__init__("flatten", attrs={"start_dim": start_dim, "end_dim": end_dim}, name=name)


def _tuple(owner: str, name: str, value: int | Sequence[int], n: int, minimum: int) -> tuple[int, ...]:
    """An int (repeated n times) or a sequence of n ints, each >= minimum."""
    items = (value,) * n if isinstance(value, int) else tuple(value)
    if len(items) != n:
        raise ValueError(f"{owner}: {name} must be an int or a sequence of {n} ints, got {value!r}")
    return tuple(_check_int(owner, name, v, minimum) for v in items)


class _ConvNd(Operator):
    """torch.nn.Conv{n}d over [N, C, *spatial]; weight [out, in/groups, *kernel]."""

    spatial = 2

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
        owner, n = type(self).__name__, self.spatial
        cin = _check_int(owner, "in_channels", in_channels, 1)
        cout = _check_int(owner, "out_channels", out_channels, 1)
        groups = _check_int(owner, "groups", groups, 1)
        if cin % groups or cout % groups:
            raise ValueError(f"{owner}: in_channels {cin} and out_channels {cout} must be divisible by groups {groups}")
        kernel = _tuple(owner, "kernel_size", kernel_size, n, 1)
        stride_ = _tuple(owner, "stride", stride, n, 1)
        dilation_ = _tuple(owner, "dilation", dilation, n, 1)
        if padding == "valid":
            padding_ = (0,) * n
        elif padding == "same":
            if stride_ != (1,) * n:
                raise ValueError(f"{owner}: padding='same' needs stride 1 (as in PyTorch)")
            totals = tuple(d * (k - 1) for d, k in zip(dilation_, kernel))
            if any(t % 2 for t in totals):
                raise ValueError(
                    f"{owner}: padding='same' with an even kernel reach is not symmetric; give padding explicitly"
                )
            padding_ = tuple(t // 2 for t in totals)
        elif isinstance(padding, str):
            raise ValueError(f"{owner}: padding must be an int, a tuple, 'valid' or 'same'; got {padding!r}")
        else:
            padding_ = _tuple(owner, "padding", padding, n, 0)
        inputs = {"input": DATA, "weight": KeySpec("param", init=Init("fan_in_uniform"))}
        if bias:
            inputs["bias"] = KeySpec("param", init=Init("fan_in_uniform", of="weight"))
        attrs = {"kernel_size": kernel, "stride": stride_, "padding": padding_, "dilation": dilation_, "groups": groups}
        super().__init__("conv", inputs, sizes={"C": cin, "O": cout, "Cg": cin // groups}, attrs=attrs, name=name)


class Conv1d(_ConvNd):
    """torch.nn.Conv1d over [N, C, L]."""

    spatial = 1


class Conv2d(_ConvNd):
    """torch.nn.Conv2d over [N, C, H, W]."""

    spatial = 2


def _pool_attrs(
    owner: str,
    n: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: int | Sequence[int],
    ceil_mode: bool,
) -> dict[str, object]:
    kernel = _tuple(owner, "kernel_size", kernel_size, n, 1)
    padding_ = _tuple(owner, "padding", padding, n, 0)
    if any(p > k // 2 for p, k in zip(padding_, kernel)):
        raise ValueError(f"{owner}: padding {padding_} must be at most half of kernel_size {kernel} (as in PyTorch)")
    stride_ = kernel if stride is None else _tuple(owner, "stride", stride, n, 1)
    return {"kernel_size": kernel, "stride": stride_, "padding": padding_, "ceil_mode": bool(ceil_mode)}


class _MaxPoolNd(Operator):
    """torch.nn.MaxPool{n}d over the last n axes: padding counts as -inf; the gradient goes to the first maximum."""

    spatial = 2

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
        owner, n = type(self).__name__, self.spatial
        attrs = _pool_attrs(owner, n, kernel_size, stride, padding, ceil_mode)
        attrs["dilation"] = _tuple(owner, "dilation", dilation, n, 1)
        super().__init__("max_pool", attrs=attrs, name=name)


class MaxPool1d(_MaxPoolNd):
    """torch.nn.MaxPool1d over the last axis."""

    spatial = 1


class MaxPool2d(_MaxPoolNd):
    """torch.nn.MaxPool2d over the last two axes."""

    spatial = 2


class _AvgPoolNd(Operator):
    """torch.nn.AvgPool{n}d over the last n axes, with count_include_pad and divisor_override."""

    spatial = 2

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
        owner, n = type(self).__name__, self.spatial
        if divisor_override is not None:
            _check_int(owner, "divisor_override", divisor_override, 1)
        attrs = _pool_attrs(owner, n, kernel_size, stride, padding, ceil_mode)
        attrs.update(count_include_pad=bool(count_include_pad), divisor_override=divisor_override)
        super().__init__("avg_pool", attrs=attrs, name=name)


class AvgPool1d(_AvgPoolNd):
    """torch.nn.AvgPool1d over the last axis (torch's AvgPool1d has no divisor_override; it is accepted here)."""

    spatial = 1


class AvgPool2d(_AvgPoolNd):
    """torch.nn.AvgPool2d over the last two axes."""

    spatial = 2


class _BatchNormNd(Operator):
    """torch.nn.BatchNorm{n}d: batch statistics in training, running statistics for inference.

    The running mean and variance are state (not parameters): compiled models keep
    and update them; inference=True compiles the running-statistics form.
    """

    ranks: tuple[int, ...] = (4,)

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
        c = _check_int(type(self).__name__, "num_features", num_features, 1)
        inputs: dict[str, KeySpec] = {"input": DATA}
        if affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
            inputs["bias"] = KeySpec("param", init=Init("zeros"))
        if track_running_stats:
            inputs["running_mean"] = KeySpec("state", init=Init("zeros"))
            inputs["running_var"] = KeySpec("state", init=Init("ones"))
        attrs = {"eps": float(eps), "momentum": float(momentum)}
        super().__init__("batch_norm", inputs, sizes={"C": c}, attrs=attrs, name=name)
        if len(self.ranks) == 1:
            with Transaction() as tx:
                unify(self.external_keys()["input"].shape.items, [Dim() for _ in range(self.ranks[0])])
                tx.propagate()


class BatchNorm1d(_BatchNormNd):
    """torch.nn.BatchNorm1d over [N, C] or [N, C, L]."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNormNd):
    """torch.nn.BatchNorm2d over [N, C, H, W]."""

    ranks = (4,)


class GroupNorm(Operator):
    """torch.nn.GroupNorm(num_groups, num_channels, eps, affine) over [N, C, *spatial]."""

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, name: str | None = None
    ) -> None:
        groups = _check_int("GroupNorm", "num_groups", num_groups, 1)
        channels = _check_int("GroupNorm", "num_channels", num_channels, 1)
        if channels % groups:
            raise ValueError(f"GroupNorm: num_channels {channels} must be divisible by num_groups {groups}")
        inputs: dict[str, KeySpec] = {"input": DATA}
        if affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
            inputs["bias"] = KeySpec("param", init=Init("zeros"))
        attrs = {"num_groups": groups, "eps": float(eps)}
        super().__init__("group_norm", inputs, sizes={"C": channels}, attrs=attrs, name=name)


class Dropout(Operator):
    """torch.nn.Dropout: zeroes elements with probability p and scales by 1/(1-p) in training."""

    def __init__(self, p: float = 0.5, *, name: str | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        super().__init__("dropout", attrs={"p": float(p)}, name=name)


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
        if elementwise_affine:
            inputs["weight"] = KeySpec("param", init=Init("ones"))
            if bias:
                inputs["bias"] = KeySpec("param", init=Init("zeros"))
        super().__init__("layer_norm", inputs, attrs={"normalized_shape": dims, "eps": float(eps)}, name=name)


class Embedding(Operator):
    """torch.nn.Embedding: rows of weight [num_embeddings, embedding_dim] picked by integer input."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, name: str | None = None) -> None:
        n = _check_int("Embedding", "num_embeddings", num_embeddings, 1)
        d = _check_int("Embedding", "embedding_dim", embedding_dim, 1)
        inputs = {"input": KeySpec(kind="int"), "weight": KeySpec("param", init=Init("normal"))}
        super().__init__("embedding", inputs, sizes={"V": n, "D": d}, name=name)


class GELU(Operator):
    """torch.nn.GELU with approximate 'none' (erf) or 'tanh'."""

    def __init__(self, approximate: str = "none", *, name: str | None = None) -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        super().__init__("gelu", attrs={"approximate": approximate}, name=name)


class SiLU(_Unary):
    """torch.nn.SiLU: input * sigmoid(input)."""

    primitive_name = "silu"


class LeakyReLU(Operator):
    """torch.nn.LeakyReLU: x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, *, name: str | None = None) -> None:
        super().__init__("leaky_relu", attrs={"negative_slope": float(negative_slope)}, name=name)


class _SoftmaxFamily(Operator):
    primitive_name = ""

    def __init__(self, dim: int = -1, *, name: str | None = None) -> None:
        _axis(type(self).__name__, dim)
        super().__init__(self.primitive_name, attrs={"axis": dim}, name=name)


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
        super().__init__("mse_loss", attrs={"reduction": _reduction("MSELoss", reduction)}, name=name)


class CrossEntropyLoss(Operator):
    """torch.nn.CrossEntropyLoss over logits [C], [N, C] or [N, C, d1, ...].

    The target holds class indices (int, the logits' shape without the class axis) or class
    probabilities (float, the logits' shape); as in torch, its rank tells which. Where ml.compile
    is not given the target's shape, its kind decides: a float target (produced by a float layer)
    holds probabilities, any other target indices. `weight` and `label_smoothing` apply to both
    forms, `ignore_index` to indices only; the target gets no gradient.
    """

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
        attrs = {
            "weight": weights,
            "ignore_index": int(ignore_index),
            "reduction": red,
            "label_smoothing": float(label_smoothing),
        }
        super().__init__("cross_entropy", {"input": DATA, "target": KeySpec(kind="any")}, attrs=attrs, name=name)


class Identity(_Unary):
    """Returns its input."""

    primitive_name = "identity"


Relu = ReLU  # the quick start's spelling
LeakyRelu = LeakyReLU
