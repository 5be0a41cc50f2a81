"""ml.optim on torch tensors: torch.optim's numbers, foreach kernels (no per-parameter loop), torch's lr schedulers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch_devices import DEVICES

import mithril as ml
from mithril.optim import schedules
from mithril.testing.optim_parity import OPTIMIZER_CASES, OptimCase, check_clip_parity, check_optimizer_parity
from mithril_torch.foreach import TorchForeach


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_optimizer_matches_torch(case: OptimCase, device: str) -> None:
    check_optimizer_parity(case, ml.TorchBackend(dtype=ml.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "within"])
def test_clip_grad_norm_matches_torch(max_norm: float, device: str) -> None:
    check_clip_parity(ml.TorchBackend(dtype=ml.float64, device=device), max_norm)


def test_torch_backend_answers_foreach_kernels() -> None:
    assert isinstance(ml.optim.foreach_ops(ml.TorchBackend()), TorchForeach)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched (top level only: the ops inside a foreach kernel are not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(optimizer: ml.optim.Optimizer, n_params: int) -> Counter[str]:
    ops = ml.optim.foreach_ops(ml.TorchBackend())
    params = {f"p{i}": torch.randn(3, 2) for i in range(n_params)}
    grads = {key: torch.randn(3, 2) for key in params}
    state = optimizer.init(params, ops)
    state = optimizer.update(params, grads, state, step=1, lr=0.1, ops=ops)[1]
    with _CountOps() as counter:
        clipped = ml.optim.clip_grad_norm(grads, 1.0, ops)
        optimizer.update(params, clipped, state, step=2, lr=0.1, ops=ops)
    return counter.calls


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_a_step_dispatches_the_same_ops_for_any_number_of_params(case: OptimCase) -> None:
    few, many = _ops_per_step(case.optimizer, 2), _ops_per_step(case.optimizer, 20)
    assert few == many, (few, many)
    assert all(name.startswith("aten._foreach_") for name in few if name not in _SCALAR_OPS), few


# Clipping's coefficient is one scalar computation whatever the number of params.
_SCALAR_OPS = {"aten.stack", "aten.linalg_vector_norm", "aten.add", "aten.reciprocal", "aten.mul", "aten.clamp"}


def test_updates_of_params_that_require_grad_record_no_autograd_history() -> None:
    ops = ml.optim.foreach_ops(ml.TorchBackend())
    params = {"w": torch.randn(4, requires_grad=True)}
    optimizer = ml.optim.Adam(lr=0.1, weight_decay=0.1)
    new_params, new_state = optimizer.update(
        params, {"w": torch.randn(4)}, optimizer.init(params, ops), step=1, lr=0.1, ops=ops
    )
    assert not any(t.requires_grad for t in [*new_params.values(), *new_state.values()])


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_a_tensor_learning_rate_and_step_give_the_float_results(case: OptimCase) -> None:
    ops = ml.optim.foreach_ops(ml.TorchBackend(dtype=ml.float64))
    gen = torch.Generator().manual_seed(0)
    params = {key: torch.randn(3, 2, generator=gen, dtype=torch.float64) for key in ("a", "b")}
    grads = [{key: torch.randn(3, 2, generator=gen, dtype=torch.float64) for key in params} for _ in range(3)]
    plain, tensor = (params, case.optimizer.init(params, ops)), (params, case.optimizer.init(params, ops))
    for step, grad in enumerate(grads, start=1):
        plain = case.optimizer.update(*plain[:1], grad, plain[1], step=step, lr=0.01, ops=ops)
        tensor = case.optimizer.update(
            *tensor[:1], grad, tensor[1], step=torch.tensor(step), lr=torch.tensor(0.01, dtype=torch.float64), ops=ops
        )
    for key, value in plain[0].items():
        torch.testing.assert_close(tensor[0][key], value, rtol=1e-12, atol=0)


# (ml.optim schedule, torch scheduler factory): the factory takes a torch optimizer.
SCHEDULES: list[tuple[str, schedules.Schedule, Callable[[Any], Any]]] = [
    ("step", schedules.step(step_size=7, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5)),
    ("cosine", schedules.cosine(T_max=20), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20)),
    (
        "cosine_eta_min",
        schedules.cosine(T_max=13, eta_min=1e-3),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=13, eta_min=1e-3),
    ),
    ("linear", schedules.linear(), lambda o: torch.optim.lr_scheduler.LinearLR(o)),
    (
        "linear_decay",
        schedules.linear(start_factor=1.0, end_factor=0.1, total_iters=30),
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30),
    ),
    (
        "warmup",
        schedules.linear_warmup(10, start_factor=0.01),
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.01, total_iters=10),
    ),
    (
        "warmup_then_cosine",
        schedules.sequential(
            [schedules.linear_warmup(5, start_factor=0.1), schedules.cosine(T_max=30)], milestones=[5]
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30),
            ],
            milestones=[5],
        ),
    ),
    (
        "three_phases",
        schedules.sequential(
            [schedules.linear_warmup(4), schedules.step(step_size=3, gamma=0.7), schedules.cosine(T_max=10)],
            milestones=[4, 15],
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, total_iters=4),
                torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.7),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
            ],
            milestones=[4, 15],
        ),
    ),
    (
        "chained_warmup_and_step",
        schedules.chain([schedules.linear_warmup(6, start_factor=0.2), schedules.step(step_size=4, gamma=0.8)]),
        lambda o: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=6),
                torch.optim.lr_scheduler.StepLR(o, 4, gamma=0.8),
            ]
        ),
    ),
]


@pytest.mark.parametrize(("name", "schedule", "make"), SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_matches_torch_lr_scheduler(
    name: str, schedule: schedules.Schedule, make: Callable[[Any], Any]
) -> None:
    base_lr = 0.1
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make(optimizer)
    expected = []
    for _ in range(60):  # the lr of each optimizer step, scheduler.step() after each
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    actual = [schedule(step, base_lr) for step in range(60)]
    assert actual == pytest.approx(expected, rel=1e-9, abs=1e-15), name
