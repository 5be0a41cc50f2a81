"""Parity of `ml.optim` with torch.optim: same params, gradients and learning rates give the same trajectory.

Every backend's tests run these cases in float64; torch is imported only when a check runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend
from ..optim import SGD, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm, global_norm
from ..optim.foreach import foreach_ops

__all__ = [
    "OPTIMIZER_CASES",
    "OptimCase",
    "Update",
    "check_clip_parity",
    "check_optimizer_parity",
    "draw_problem",
]

# One update as a function of (params, grads, opt_state, step, lr): the plain `opt.update`, or a
# backend's wrapper around it (e.g. jax.jit with step and lr as traced arrays).
Update = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any], int, float], tuple[Any, Any]]

SHAPES: dict[str, tuple[int, ...]] = {
    "linear_0.weight": (5, 4),
    "linear_0.bias": (5,),
    "conv2d_0.weight": (3, 2, 3, 3),
    "scale": (1,),
}
STEPS = 30
RTOL = 1e-9


@dataclass(frozen=True)
class OptimCase:
    """An `ml.optim` optimizer; its torch twin is the torch.optim class of the same name and arguments."""

    name: str
    optimizer: Optimizer


OPTIMIZER_CASES = [
    OptimCase("sgd", SGD(lr=0.1)),
    OptimCase("sgd_weight_decay", SGD(lr=0.1, weight_decay=0.05)),
    OptimCase("sgd_momentum", SGD(lr=0.05, momentum=0.9)),
    OptimCase("sgd_momentum_dampening", SGD(lr=0.05, momentum=0.9, dampening=0.3)),
    OptimCase("sgd_momentum_weight_decay", SGD(lr=0.05, momentum=0.8, weight_decay=0.01)),
    OptimCase("sgd_nesterov", SGD(lr=0.05, momentum=0.9, nesterov=True)),
    OptimCase("sgd_nesterov_weight_decay", SGD(lr=0.05, momentum=0.9, weight_decay=0.02, nesterov=True)),
    OptimCase("adam", Adam(lr=1e-2)),
    OptimCase("adam_weight_decay", Adam(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)),
    OptimCase("adam_amsgrad", Adam(lr=1e-2, amsgrad=True)),
    OptimCase("adam_amsgrad_weight_decay", Adam(lr=1e-2, eps=1e-6, weight_decay=0.05, amsgrad=True)),
    OptimCase("adamw", AdamW(lr=1e-2)),
    OptimCase("adamw_amsgrad", AdamW(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    OptimCase("adamw_no_decay", AdamW(lr=1e-2, weight_decay=0.0)),
    OptimCase("rmsprop", RMSprop(lr=1e-2)),
    OptimCase("rmsprop_weight_decay", RMSprop(lr=1e-2, alpha=0.9, weight_decay=0.1)),
    OptimCase("rmsprop_momentum", RMSprop(lr=1e-2, momentum=0.9)),
    OptimCase("rmsprop_centered", RMSprop(lr=1e-2, centered=True)),
    OptimCase("rmsprop_centered_momentum_decay", RMSprop(lr=1e-2, momentum=0.5, weight_decay=0.01, centered=True)),
]


def draw_problem(
    seed: int = 0, steps: int = STEPS
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], list[float]]:
    """Random float64 params, a fixed sequence of random gradients, and a varying learning-rate factor per step."""
    rng = np.random.default_rng(seed)
    params = {key: rng.standard_normal(shape) for key, shape in SHAPES.items()}
    grads = [{key: rng.standard_normal(shape) for key, shape in SHAPES.items()} for _ in range(steps)]
    factors = [float(f) for f in rng.uniform(0.5, 1.5, steps)]
    return params, grads, factors


def _torch_trajectory(
    optimizer: Optimizer, params: Mapping[str, np.ndarray], grads: list[dict[str, np.ndarray]], lrs: list[float]
) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The params after each torch.optim step, and the final state keyed like `ml.optim`'s."""
    import torch  # noqa: PLC0415 - only the parity checks need torch

    tensors = {key: torch.tensor(value, dtype=torch.float64, requires_grad=True) for key, value in params.items()}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in optimizer.hyperparameters().items()}
    reference = getattr(torch.optim, type(optimizer).__name__)(list(tensors.values()), **kwargs, foreach=False)
    trajectory = []
    for grad, lr in zip(grads, lrs):
        for group in reference.param_groups:
            group["lr"] = lr
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(grad[key], dtype=torch.float64)
        reference.step()
        trajectory.append({key: tensor.detach().numpy().copy() for key, tensor in tensors.items()})
    state = {
        f"{slot}/{key}": reference.state[tensor][slot].numpy().copy()
        for slot in optimizer.slots
        for key, tensor in tensors.items()
    }
    return trajectory, state


def _host(backend: Backend, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Copies of backend arrays as NumPy arrays (copies: torch's to_numpy shares memory)."""
    return {key: np.array(backend.to_numpy(value), dtype=np.float64, copy=True) for key, value in arrays.items()}


def _assert_unchanged(before: Mapping[str, np.ndarray], backend: Backend, after: Mapping[str, Any], what: str) -> None:
    for key, value in after.items():
        assert np.array_equal(before[key], backend.to_numpy(value), equal_nan=True), (
            f"update modified its {what} {key!r}"
        )


def check_optimizer_parity(
    case: OptimCase, backend: Backend, *, update: Update | None = None, steps: int = STEPS, seed: int = 0
) -> None:
    """`STEPS` updates of `case.optimizer` on `backend` (float64) equal torch.optim's within `RTOL`, inputs untouched.

    Compares the params after every step and the final optimizer state slot by slot.
    """
    optimizer, ops = case.optimizer, foreach_ops(backend)
    host_params, host_grads, factors = draw_problem(seed, steps)
    lrs = [optimizer.lr * factor for factor in factors]
    expected, expected_state = _torch_trajectory(optimizer, host_params, host_grads, lrs)
    if update is None:

        def update(params: Any, grads: Any, state: Any, step: int, lr: float) -> tuple[Any, Any]:
            return optimizer.update(params, grads, state, step=step, lr=lr, ops=ops)

    params = {key: backend.array(value) for key, value in host_params.items()}
    state = optimizer.init(params, ops)
    state_keys = set(state)
    for index, (host_grad, lr) in enumerate(zip(host_grads, lrs)):
        grads = {key: backend.array(value) for key, value in host_grad.items()}
        before = {"params": _host(backend, params), "grads": _host(backend, grads), "opt_state": _host(backend, state)}
        new_params, new_state = update(params, grads, state, index + 1, lr)
        for what, given in (("params", params), ("grads", grads), ("opt_state", state)):
            _assert_unchanged(before[what], backend, given, what)
        # sets: jax.jit returns dicts in sorted key order
        assert set(new_params) == set(params) and set(new_state) == state_keys, (list(new_params), list(new_state))
        for key, value in new_params.items():
            np.testing.assert_allclose(
                backend.to_numpy(value),
                expected[index][key],
                rtol=RTOL,
                atol=0,
                err_msg=f"{case.name} step {index + 1} {key}",
            )
        params, state = new_params, new_state
    for key, value in state.items():
        np.testing.assert_allclose(
            backend.to_numpy(value), expected_state[key], rtol=RTOL, atol=1e-300, err_msg=f"{case.name} state {key}"
        )


def check_clip_parity(backend: Backend, max_norm: float, *, seed: int = 0) -> None:
    """`clip_grad_norm` and `global_norm` on `backend` (float64) equal torch.nn.utils.clip_grad_norm_ within `RTOL`."""
    import torch  # noqa: PLC0415 - only the parity checks need torch

    ops = foreach_ops(backend)
    _, host_grads, _ = draw_problem(seed, steps=1)
    tensors = [torch.zeros(value.shape, dtype=torch.float64, requires_grad=True) for value in host_grads[0].values()]
    for tensor, value in zip(tensors, host_grads[0].values()):
        tensor.grad = torch.tensor(value, dtype=torch.float64)
    norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=False)
    grads = {key: backend.array(value) for key, value in host_grads[0].items()}
    clipped = clip_grad_norm(grads, max_norm, ops)
    _assert_unchanged(host_grads[0], backend, grads, "grads")
    assert list(clipped) == list(grads)
    np.testing.assert_allclose(float(backend.to_numpy(global_norm(grads, ops))), float(norm), rtol=RTOL)
    for (key, value), tensor in zip(clipped.items(), tensors):
        assert tensor.grad is not None
        np.testing.assert_allclose(backend.to_numpy(value), tensor.grad.numpy(), rtol=RTOL, atol=0, err_msg=key)
