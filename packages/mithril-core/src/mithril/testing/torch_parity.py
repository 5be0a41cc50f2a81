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
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Embedding,
    LayerNorm,
    LeakyRelu,
    Linear,
    LogSoftmax,
    MaxPool2d,
    MSELoss,
    Sigmoid,
    Softmax,
    Tanh,
)
from ..models.base import BaseModel
from .models import quickstart_cnn

__all__ = ["ParityCase", "PARITY_CASES", "quickstart_cnn", "torch_quickstart_cnn", "check_torch_parity"]


@dataclass
class ParityCase:
    """A Mithril model and its torch.nn twin; `names` maps Mithril keys to torch state_dict keys."""

    name: str
    build: Callable[[], BaseModel]
    module: Callable[[Any], Any]  # torch.nn namespace -> module
    shapes: dict[str, list[int]]
    names: dict[str, str] = field(default_factory=dict)
    target_classes: int | None = None  # integer targets for classification losses
    float_target: bool = False


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


_CNN_NAMES = {
    f"{m}.{k}": f"{i}.{k}"
    for m, i, keys in [
        ("conv2d_0", 0, ("weight", "bias")),
        ("batchnorm2d_0", 1, ("weight", "bias", "running_mean", "running_var")),
        ("conv2d_1", 4, ("weight", "bias")),
        ("batchnorm2d_1", 5, ("weight", "bias", "running_mean", "running_var")),
        ("linear_0", 9, ("weight", "bias")),
        ("linear_1", 11, ("weight", "bias")),
    ]
    for k in keys
}

PARITY_CASES: list[ParityCase] = [
    ParityCase("Linear", lambda: Linear(5), lambda nn: nn.Linear(4, 5), {"input": [3, 4]}),
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
        "MaxPool2d",
        lambda: MaxPool2d(3, stride=2, padding=1),
        lambda nn: nn.MaxPool2d(3, 2, 1),
        {"input": [2, 3, 7, 6]},
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
    ParityCase("BatchNorm2d", lambda: BatchNorm2d(3), lambda nn: nn.BatchNorm2d(3), {"input": [4, 3, 5, 5]}),
    ParityCase("LayerNorm", lambda: LayerNorm(6), lambda nn: nn.LayerNorm(6), {"input": [2, 3, 6]}),
    ParityCase(
        "Embedding", lambda: Embedding(10, 4), lambda nn: nn.Embedding(10, 4), {"input": [3, 5]}, target_classes=10
    ),
    ParityCase("Sigmoid", Sigmoid, lambda nn: nn.Sigmoid(), {"input": [3, 4]}),
    ParityCase("Tanh", Tanh, lambda nn: nn.Tanh(), {"input": [3, 4]}),
    ParityCase("GELU", GELU, lambda nn: nn.GELU(), {"input": [3, 4]}),
    ParityCase("GELU_tanh", lambda: GELU("tanh"), lambda nn: nn.GELU("tanh"), {"input": [3, 4]}),
    ParityCase("LeakyRelu", lambda: LeakyRelu(0.1), lambda nn: nn.LeakyReLU(0.1), {"input": [3, 4]}),
    ParityCase("Softmax", lambda: Softmax(dim=1), lambda nn: nn.Softmax(dim=1), {"input": [3, 4]}),
    ParityCase("LogSoftmax", lambda: LogSoftmax(dim=1), lambda nn: nn.LogSoftmax(dim=1), {"input": [3, 4]}),
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
    ParityCase(
        "QuickstartCNN",
        quickstart_cnn,
        lambda nn: torch_quickstart_cnn(nn, 16),
        {"input": [4, 3, 16, 16]},
        names=_CNN_NAMES,
    ),
]


def _weighted_ce(nn: Any) -> Any:
    import torch  # noqa: PLC0415

    return nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), ignore_index=2, label_smoothing=0.2
    )


def _close(got: Any, want: np.ndarray, rtol: float, label: str) -> None:
    """Relative comparison with an absolute floor, for values that are zero analytically (bias before BN)."""
    got = np.asarray(got, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    floor = 1e-12 if rtol < 1e-6 else rtol * 1e-2
    np.testing.assert_allclose(got, want, rtol=rtol, atol=max(rtol * scale, floor), err_msg=label)


def check_torch_parity(case: ParityCase, backend: Backend, *, training: bool = True, seed: int = 0) -> None:
    """Compare `backend` with torch.nn in float64 torch (the backend may use a lower precision)."""
    import torch  # noqa: PLC0415

    rtol = {"float64": 1e-8, "float32": 1e-4}.get(backend.dtype.name, 2e-2)
    torch.manual_seed(seed)
    module = case.module(torch.nn).double()
    module.train(training)
    rng = np.random.default_rng(seed)
    state_dict = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if not training:  # make running statistics non-trivial
        for key, value in state_dict.items():
            if key.endswith("running_mean"):
                value.copy_(torch.tensor(rng.standard_normal(value.shape)))
            elif key.endswith("running_var"):
                value.copy_(torch.tensor(rng.uniform(0.5, 2.0, value.shape)))
        module.load_state_dict(state_dict)
    compiled = compiler.compile(case.build(), backend, shapes=case.shapes, inference=not training)
    to_torch = {k: case.names.get(k, k) for k in [*compiled.param_keys, *compiled.state_keys]}
    params = {k: backend.array(state_dict[to_torch[k]].numpy()) for k in compiled.param_keys}
    if compiled.state_keys:
        compiled.state = {k: backend.array(state_dict[to_torch[k]].numpy()) for k in compiled.state_keys}

    x: np.ndarray = rng.standard_normal(case.shapes["input"])
    if case.name == "Embedding":
        x = rng.integers(0, case.target_classes or 1, case.shapes["input"])
    inputs = {"input": x}
    torch_args = [torch.tensor(x, requires_grad=case.name != "Embedding")]
    if "target" in case.shapes:
        target: np.ndarray
        if case.float_target:
            target = rng.standard_normal(case.shapes["target"])
        else:
            target = rng.integers(0, case.target_classes or 1, case.shapes["target"])
        inputs["target"] = target
        torch_args.append(torch.tensor(target))
    native = {k: backend.array(v) for k, v in inputs.items()}

    want = module(*torch_args)
    seed_grad = rng.standard_normal(tuple(want.shape))
    torch_params = dict(module.named_parameters())
    if training:
        want.backward(torch.tensor(seed_grad))
        outputs, grads = compiled.evaluate(params, native, {"output": backend.array(seed_grad)})
    else:
        outputs, grads = compiled.evaluate(params, native), {}
    _close(backend.to_numpy(outputs["output"]), want.detach().numpy(), rtol, f"{case.name}: output")
    for key, grad in grads.items():
        _close(backend.to_numpy(grad), torch_params[to_torch[key]].grad.numpy(), rtol, f"{case.name}: grad {key}")
    if training and compiled.state_keys:
        buffers = dict(module.named_buffers())
        for key, value in (compiled.state or {}).items():
            _close(backend.to_numpy(value), buffers[to_torch[key]].numpy(), rtol, f"{case.name}: state {key}")
