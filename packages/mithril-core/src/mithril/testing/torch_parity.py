"""Parity with torch.nn: same parameters and inputs give the same outputs, gradients and state.

Every backend's tests run these cases; torch is imported only when a check runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import compiler
from ..backend import Backend
from ..models import (
    GELU,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    CrossEntropyLoss,
    Embedding,
    GroupNorm,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    MSELoss,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from ..models.base import BaseModel
from .models import quickstart_cnn, quickstart_cnn1d

__all__ = [
    "ParityCase",
    "PARITY_CASES",
    "quickstart_cnn",
    "torch_quickstart_cnn",
    "torch_quickstart_cnn1d",
    "check_torch_parity",
]


@dataclass
class ParityCase:
    """A Mithril model and its torch.nn twin; `names` maps Mithril keys to torch state_dict keys."""

    name: str
    build: Callable[[], BaseModel]
    module: Callable[[Any], Any]  # torch.nn namespace -> module
    shapes: dict[str, list[int]]
    names: dict[str, str] = field(default_factory=dict)
    target_classes: int | None = None  # integer targets (or indices) below this bound
    float_target: bool = False
    int_input: bool = False  # integer indices in [0, target_classes): no input gradient


def torch_quickstart_cnn(nn: Any, image: int = 32) -> Any:
    """The same CNN as torch.nn.Sequential."""
    flat = 32 * (image // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def torch_quickstart_cnn1d(nn: Any, length: int, in_channels: int = 4, channels: int = 16, classes: int = 10) -> Any:
    """`quickstart_cnn1d` as torch.nn.Sequential, for inputs [N, in_channels, length]."""
    return nn.Sequential(
        nn.Conv1d(in_channels, channels, 5, padding=2),
        nn.BatchNorm1d(channels),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(channels * (length // 2), classes),
    )


def _names(layers: list[tuple[str, int, tuple[str, ...]]]) -> dict[str, str]:
    """Mithril keys `layer.key` -> torch.nn.Sequential keys `index.key`."""
    return {f"{m}.{k}": f"{i}.{k}" for m, i, keys in layers for k in keys}


_AFFINE = ("weight", "bias")
_BN = ("weight", "bias", "running_mean", "running_var")
_CNN_NAMES = _names(
    [
        ("conv2d_0", 0, _AFFINE),
        ("batchnorm2d_0", 1, _BN),
        ("conv2d_1", 4, _AFFINE),
        ("batchnorm2d_1", 5, _BN),
        ("linear_0", 9, _AFFINE),
        ("linear_1", 11, _AFFINE),
    ]
)
_CNN1D_NAMES = _names([("conv1d_0", 0, _AFFINE), ("batchnorm1d_0", 1, _BN), ("linear_0", 5, _AFFINE)])

PARITY_CASES: list[ParityCase] = [
    ParityCase("Linear", lambda: Linear(5), lambda nn: nn.Linear(4, 5), {"input": [3, 4]}),
    ParityCase(
        "Linear_no_bias", lambda: Linear(5, bias=False), lambda nn: nn.Linear(4, 5, bias=False), {"input": [3, 4]}
    ),
    # -- convolutions
    ParityCase(
        "Conv1d",
        lambda: Conv1d(3, 4, 3, stride=2, padding=1),
        lambda nn: nn.Conv1d(3, 4, 3, stride=2, padding=1),
        {"input": [2, 3, 9]},
    ),
    ParityCase(
        "Conv1d_dilation_groups",
        lambda: Conv1d(4, 6, 3, stride=2, padding=3, dilation=2, groups=2),
        lambda nn: nn.Conv1d(4, 6, 3, stride=2, padding=3, dilation=2, groups=2),
        {"input": [2, 4, 12]},
    ),
    ParityCase(
        "Conv1d_depthwise_no_bias",
        lambda: Conv1d(4, 8, 4, stride=3, groups=4, bias=False),
        lambda nn: nn.Conv1d(4, 8, 4, stride=3, groups=4, bias=False),
        {"input": [2, 4, 13]},
    ),
    ParityCase(
        "Conv1d_same",
        lambda: Conv1d(3, 5, 5, padding="same", dilation=2),
        lambda nn: nn.Conv1d(3, 5, 5, padding="same", dilation=2),
        {"input": [2, 3, 10]},
    ),
    ParityCase(
        "Conv2d",
        lambda: Conv2d(3, 4, 3, stride=2, padding=1),
        lambda nn: nn.Conv2d(3, 4, 3, 2, 1),
        {"input": [2, 3, 7, 7]},
    ),
    ParityCase(
        "Conv2d_groups",
        lambda: Conv2d(4, 6, (3, 2), dilation=(2, 1), groups=2),
        lambda nn: nn.Conv2d(4, 6, (3, 2), dilation=(2, 1), groups=2),
        {"input": [2, 4, 8, 6]},
    ),
    ParityCase(
        "Conv2d_dilation_no_bias",
        lambda: Conv2d(2, 3, 3, stride=(2, 1), padding=(2, 1), dilation=2, bias=False),
        lambda nn: nn.Conv2d(2, 3, 3, stride=(2, 1), padding=(2, 1), dilation=2, bias=False),
        {"input": [2, 2, 9, 7]},
    ),
    ParityCase(
        "Conv2d_same",
        lambda: Conv2d(3, 4, (3, 5), padding="same"),
        lambda nn: nn.Conv2d(3, 4, (3, 5), padding="same"),
        {"input": [2, 3, 6, 7]},
    ),
    # -- pooling
    ParityCase(
        "MaxPool1d",
        lambda: MaxPool1d(3, stride=2, padding=1),
        lambda nn: nn.MaxPool1d(3, stride=2, padding=1),
        {"input": [2, 3, 9]},
    ),
    ParityCase("MaxPool1d_default_stride", lambda: MaxPool1d(2), lambda nn: nn.MaxPool1d(2), {"input": [2, 3, 7]}),
    ParityCase(
        "MaxPool1d_dilation_ceil",
        lambda: MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        lambda nn: nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        {"input": [2, 3, 10]},
    ),
    ParityCase(
        "MaxPool2d",
        lambda: MaxPool2d(3, stride=2, padding=1),
        lambda nn: nn.MaxPool2d(3, 2, 1),
        {"input": [2, 3, 7, 6]},
    ),
    ParityCase(
        "MaxPool2d_dilation_ceil",
        lambda: MaxPool2d((3, 2), stride=2, padding=1, dilation=(2, 1), ceil_mode=True),
        lambda nn: nn.MaxPool2d((3, 2), stride=2, padding=1, dilation=(2, 1), ceil_mode=True),
        {"input": [2, 2, 9, 8]},
    ),
    ParityCase(
        "AvgPool1d",
        lambda: AvgPool1d(3, stride=2, padding=1),
        lambda nn: nn.AvgPool1d(3, stride=2, padding=1),
        {"input": [2, 3, 9]},
    ),
    ParityCase(
        "AvgPool1d_exclusive_ceil",
        lambda: AvgPool1d(2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda nn: nn.AvgPool1d(2, padding=1, ceil_mode=True, count_include_pad=False),
        {"input": [2, 3, 6]},
    ),
    ParityCase(
        "AvgPool1d_ceil",
        lambda: AvgPool1d(4, stride=3, padding=2, ceil_mode=True),
        lambda nn: nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True),
        {"input": [2, 3, 10]},
    ),
    ParityCase(
        "AvgPool2d",
        lambda: AvgPool2d(3, stride=2, padding=1),
        lambda nn: nn.AvgPool2d(3, 2, 1),
        {"input": [2, 3, 7, 6]},
    ),
    ParityCase(
        "AvgPool2d_exclusive_ceil",
        lambda: AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda nn: nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
        {"input": [1, 2, 5, 5]},
    ),
    ParityCase(
        "AvgPool2d_ceil",
        lambda: AvgPool2d((3, 2), stride=2, ceil_mode=True),
        lambda nn: nn.AvgPool2d((3, 2), stride=2, ceil_mode=True),
        {"input": [1, 2, 6, 7]},
    ),
    ParityCase(
        "AvgPool2d_divisor_override",
        lambda: AvgPool2d(3, stride=2, padding=1, divisor_override=5),
        lambda nn: nn.AvgPool2d(3, 2, 1, divisor_override=5),
        {"input": [2, 3, 7, 6]},
    ),
    # -- normalisation
    ParityCase("BatchNorm1d_NC", lambda: BatchNorm1d(5), lambda nn: nn.BatchNorm1d(5), {"input": [6, 5]}),
    ParityCase(
        "BatchNorm1d_NC_options",
        lambda: BatchNorm1d(5, eps=1e-3, momentum=0.3, affine=False),
        lambda nn: nn.BatchNorm1d(5, eps=1e-3, momentum=0.3, affine=False),
        {"input": [6, 5]},
    ),
    ParityCase("BatchNorm1d_NCL", lambda: BatchNorm1d(3), lambda nn: nn.BatchNorm1d(3), {"input": [4, 3, 7]}),
    ParityCase(
        "BatchNorm1d_NCL_options",
        lambda: BatchNorm1d(3, eps=1e-2, momentum=0.5, affine=False),
        lambda nn: nn.BatchNorm1d(3, eps=1e-2, momentum=0.5, affine=False),
        {"input": [4, 3, 7]},
    ),
    ParityCase(
        "BatchNorm1d_NCL_affine_options",
        lambda: BatchNorm1d(3, eps=1e-3, momentum=0.25),
        lambda nn: nn.BatchNorm1d(3, eps=1e-3, momentum=0.25),
        {"input": [5, 3, 4]},
    ),
    ParityCase("BatchNorm2d", lambda: BatchNorm2d(3), lambda nn: nn.BatchNorm2d(3), {"input": [4, 3, 5, 5]}),
    ParityCase(
        "BatchNorm2d_options",
        lambda: BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=False),
        lambda nn: nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=False),
        {"input": [4, 3, 3, 4]},
    ),
    ParityCase("GroupNorm_1", lambda: GroupNorm(1, 4), lambda nn: nn.GroupNorm(1, 4), {"input": [2, 4, 5]}),
    ParityCase("GroupNorm_2", lambda: GroupNorm(2, 4), lambda nn: nn.GroupNorm(2, 4), {"input": [2, 4, 3, 3]}),
    ParityCase("GroupNorm_C", lambda: GroupNorm(4, 4), lambda nn: nn.GroupNorm(4, 4), {"input": [2, 4, 5]}),
    ParityCase(
        "GroupNorm_no_affine",
        lambda: GroupNorm(3, 6, eps=1e-3, affine=False),
        lambda nn: nn.GroupNorm(3, 6, eps=1e-3, affine=False),
        {"input": [3, 6, 4]},
    ),
    ParityCase("LayerNorm", lambda: LayerNorm(6), lambda nn: nn.LayerNorm(6), {"input": [2, 3, 6]}),
    ParityCase(
        "Embedding",
        lambda: Embedding(10, 4),
        lambda nn: nn.Embedding(10, 4),
        {"input": [3, 5]},
        target_classes=10,
        int_input=True,
    ),
    # -- activations
    ParityCase("ReLU", ReLU, lambda nn: nn.ReLU(), {"input": [3, 4]}),
    ParityCase("Sigmoid", Sigmoid, lambda nn: nn.Sigmoid(), {"input": [3, 4]}),
    ParityCase("Tanh", Tanh, lambda nn: nn.Tanh(), {"input": [3, 4]}),
    ParityCase("SiLU", SiLU, lambda nn: nn.SiLU(), {"input": [3, 4]}),
    ParityCase("GELU", GELU, lambda nn: nn.GELU(), {"input": [3, 4]}),
    ParityCase(
        "GELU_tanh", lambda: GELU(approximate="tanh"), lambda nn: nn.GELU(approximate="tanh"), {"input": [3, 4]}
    ),
    ParityCase(
        "LeakyReLU",
        lambda: LeakyReLU(negative_slope=0.2),
        lambda nn: nn.LeakyReLU(negative_slope=0.2),
        {"input": [3, 4]},
    ),
    ParityCase("Softmax", lambda: Softmax(dim=1), lambda nn: nn.Softmax(dim=1), {"input": [3, 4]}),
    ParityCase("LogSoftmax", lambda: LogSoftmax(dim=1), lambda nn: nn.LogSoftmax(dim=1), {"input": [3, 4]}),
    # -- losses
    ParityCase("MSELoss", MSELoss, lambda nn: nn.MSELoss(), {"input": [3, 4], "target": [3, 4]}, float_target=True),
    ParityCase(
        "CrossEntropyLoss",
        CrossEntropyLoss,
        lambda nn: nn.CrossEntropyLoss(),
        {"input": [5, 4], "target": [5]},
        target_classes=4,
    ),
    ParityCase(
        "CrossEntropyLoss_options",
        lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5], ignore_index=2, label_smoothing=0.2),
        lambda nn: _weighted_ce(nn),
        {"input": [6, 3, 2], "target": [6, 2]},
        target_classes=3,
    ),
    # -- models
    ParityCase(
        "QuickstartCNN",
        quickstart_cnn,
        lambda nn: torch_quickstart_cnn(nn, 16),
        {"input": [4, 3, 16, 16]},
        names=_CNN_NAMES,
    ),
    ParityCase(
        "QuickstartCNN1d",
        quickstart_cnn1d,
        lambda nn: torch_quickstart_cnn1d(nn, 12),
        {"input": [4, 4, 12]},
        names=_CNN1D_NAMES,
    ),
]


def _weighted_ce(nn: Any) -> Any:
    import torch  # noqa: PLC0415

    return nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), ignore_index=2, label_smoothing=0.2
    )


def _close(got: Any, want: np.ndarray, rtol: float, label: str, reference: float = 0.0) -> None:
    """Relative comparison; values that are zero analytically (a bias before BN) may be off by
    rtol / 100 of `reference`, the largest value of their kind (gradients: of the whole case)."""
    got = np.asarray(got, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-2 * reference), err_msg=label)


def _same_keys(case: ParityCase, what: str, ours: list[str], theirs: list[str]) -> None:
    """The mapped Mithril keys are exactly torch's (same parameters and buffers, same layout names)."""
    if sorted(ours) != sorted(theirs):
        raise AssertionError(f"{case.name}: {what} differ: Mithril (mapped) {sorted(ours)}, torch {sorted(theirs)}")


def _grad_of(tensor: Any) -> np.ndarray:
    """The gradient torch accumulated on a leaf tensor, as NumPy."""
    assert tensor.grad is not None, "torch gave no gradient"
    return np.asarray(tensor.grad.numpy())


def check_torch_parity(case: ParityCase, backend: Backend, *, training: bool = True, seed: int = 0) -> None:
    """Compare `backend` with torch.nn in float64 torch (the backend may use a lower precision).

    Parameters are torch's initial ones, perturbed so that ones and zeros (norm layers) do not
    hide a missing term. Training compares the output, the gradient of every parameter and of
    the input, and the running statistics after the step; inference compares the output with
    random running statistics.
    """
    import torch  # noqa: PLC0415

    rtol = {"float64": 1e-9, "float32": 1e-4}.get(backend.dtype.name, 2e-2)
    torch.manual_seed(seed)
    module = case.module(torch.nn).double()
    module.train(training)
    rng = np.random.default_rng(seed)
    params = dict(module.named_parameters())
    buffers = {k: v for k, v in module.named_buffers() if k.endswith(("running_mean", "running_var"))}
    with torch.no_grad():
        for value in params.values():
            value.mul_(torch.tensor(rng.uniform(0.5, 1.5, value.shape))).add_(
                torch.tensor(rng.normal(0, 0.1, value.shape))
            )
        if not training:  # make running statistics non-trivial
            for key, value in buffers.items():
                if key.endswith("running_mean"):
                    value.copy_(torch.tensor(rng.standard_normal(value.shape)))
                elif key.endswith("running_var"):
                    value.copy_(torch.tensor(rng.uniform(0.5, 2.0, value.shape)))
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}

    input_grad = training and not case.int_input
    compiled = compiler.compile(
        case.build(),
        backend,
        shapes=case.shapes,
        inference=not training,
        trainable_keys=("input",) if input_grad else (),
    )
    weights = [k for k in compiled.param_keys if k != "input"]
    to_torch = {k: case.names.get(k, k) for k in [*weights, *compiled.state_keys]}
    _same_keys(case, "parameters", [to_torch[k] for k in weights], list(params))
    _same_keys(case, "buffers", [to_torch[k] for k in compiled.state_keys], list(buffers))
    ours = {k: backend.array(start[to_torch[k]].numpy()) for k in weights}
    if compiled.state_keys:
        compiled.state = {k: backend.array(start[to_torch[k]].numpy()) for k in compiled.state_keys}

    x: np.ndarray = rng.standard_normal(case.shapes["input"])
    if case.int_input:
        x = rng.integers(0, case.target_classes or 1, case.shapes["input"])
    x_torch = torch.tensor(x, requires_grad=input_grad)
    inputs = {"input": x}
    torch_args = [x_torch]
    if "target" in case.shapes:
        target: np.ndarray
        if case.float_target:
            target = rng.standard_normal(case.shapes["target"])
        else:
            target = rng.integers(0, case.target_classes or 1, case.shapes["target"])
        inputs["target"] = target
        torch_args.append(torch.tensor(target))
    if input_grad:
        ours["input"] = backend.array(inputs.pop("input"))
    native = {k: backend.array(v) for k, v in inputs.items()}

    want = module(*torch_args)
    if training:
        seed_grad = rng.standard_normal(tuple(want.shape))
        want.backward(torch.tensor(seed_grad))
        outputs, grads = compiled.evaluate(ours, native, {"output": backend.array(seed_grad)})
        _same_keys(case, "gradients", list(grads), list(ours))
    else:
        outputs, grads = compiled.evaluate(ours, native), {}
    _close(backend.to_numpy(outputs["output"]), want.detach().numpy(), rtol, f"{case.name}: output")
    expected = {k: _grad_of(x_torch if k == "input" else params[to_torch[k]]) for k in grads}
    largest = max((float(np.max(np.abs(g))) for g in expected.values() if g.size), default=0.0)
    for key, grad in grads.items():
        _close(backend.to_numpy(grad), expected[key], rtol, f"{case.name}: grad {key}", largest)
    for key, value in (compiled.state or {}).items():
        _close(backend.to_numpy(value), buffers[to_torch[key]].numpy(), rtol, f"{case.name}: state {key}")
