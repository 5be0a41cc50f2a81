"""Learning-rate schedules: pure functions of the step index, equal to torch.optim.lr_scheduler's values.

A schedule is called as `schedule(step, base_lr) -> lr`, where `step` counts optimizer steps
from 0 (the first step uses `schedule(0, base_lr)`): it gives the learning rate torch's
scheduler holds after `step` calls of `scheduler.step()`, when `scheduler.step()` is called
once per optimizer step. (Call it with an epoch index instead to get torch's per-epoch use.)
The values come from closed forms, so they agree with torch's recursive updates to rounding.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .base import check_number

__all__ = [
    "Chain",
    "Cosine",
    "Linear",
    "Schedule",
    "Sequential",
    "Step",
    "chain",
    "cosine",
    "linear",
    "linear_warmup",
    "sequential",
    "step",
]


class Schedule(ABC):
    """A learning-rate schedule: `schedule(step, base_lr)` is the learning rate of optimizer step `step` (from 0)."""

    def __call__(self, step: int, base_lr: float) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{type(self).__name__} schedule: step must be an int >= 0 (0 is the first), got {step!r}")
        return self.value(step, float(base_lr))

    @abstractmethod
    def value(self, step: int, base_lr: float) -> float:
        """The learning rate at `step` (already checked)."""


def _count(owner: str, name: str, value: object, at_least: int) -> int:
    """`value` when it is an int >= at_least; a TypeError or ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < at_least:
        raise ValueError(f"{owner}: {name} must be >= {at_least}, got {value!r}")
    return value


def _schedules(owner: str, schedules: Sequence[Schedule]) -> tuple[Schedule, ...]:
    """`schedules` as a tuple; a TypeError unless it is a non-empty sequence of schedules."""
    if not schedules or not all(isinstance(s, Schedule) for s in schedules):
        raise TypeError(f"{owner}: schedules must be a non-empty list of ml.optim.schedules, got {schedules!r}")
    return tuple(schedules)


@dataclass(frozen=True)
class Step(Schedule):
    """torch's StepLR: base_lr * gamma ** (step // step_size)."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _count("ml.optim.schedules.step", "step_size", self.step_size, 1)
        object.__setattr__(self, "gamma", check_number("ml.optim.schedules.step", "gamma", self.gamma))

    def value(self, step: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class Cosine(Schedule):
    """torch's CosineAnnealingLR: eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2.

    Past T_max the cosine continues (the rate rises again), as in torch.
    """

    T_max: int  # noqa: N815 - torch's spelling
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        _count("ml.optim.schedules.cosine", "T_max", self.T_max, 1)
        object.__setattr__(self, "eta_min", check_number("ml.optim.schedules.cosine", "eta_min", self.eta_min))

    def value(self, step: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * step / self.T_max)) / 2


@dataclass(frozen=True)
class Linear(Schedule):
    """torch's LinearLR: base_lr times a factor moving linearly from start_factor to end_factor in total_iters steps."""

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def __post_init__(self) -> None:
        owner = "ml.optim.schedules.linear"
        object.__setattr__(self, "start_factor", check_number(owner, "start_factor", self.start_factor, at_most=1.0))
        object.__setattr__(self, "end_factor", check_number(owner, "end_factor", self.end_factor, at_most=1.0))
        _count(owner, "total_iters", self.total_iters, 1)

    def value(self, step: int, base_lr: float) -> float:
        progress = min(step, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


@dataclass(frozen=True)
class Sequential(Schedule):
    """torch's SequentialLR: schedules[i] from milestones[i - 1] on, each restarted at its own step 0."""

    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def __post_init__(self) -> None:
        owner = "ml.optim.schedules.sequential"
        schedules, milestones = _schedules(owner, self.schedules), tuple(self.milestones)
        for i, milestone in enumerate(milestones):
            _count(owner, f"milestones[{i}]", milestone, 1)
        if len(milestones) != len(schedules) - 1 or list(milestones) != sorted(set(milestones)):
            raise ValueError(
                f"{owner}: milestones must be {len(schedules) - 1} increasing step indices (one fewer than the "
                f"{len(schedules)} schedules), got {list(milestones)}"
            )
        object.__setattr__(self, "schedules", schedules)
        object.__setattr__(self, "milestones", milestones)

    def value(self, step: int, base_lr: float) -> float:
        index = bisect.bisect_right(self.milestones, step)
        start = self.milestones[index - 1] if index else 0
        return self.schedules[index].value(step - start, base_lr)


@dataclass(frozen=True)
class Chain(Schedule):
    """Schedules applied in turn, each to the previous one's rate: the product of their factors.

    Equals torch's ChainedScheduler for schedules that scale the rate (step, linear; cosine with eta_min=0).
    """

    schedules: tuple[Schedule, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", _schedules("ml.optim.schedules.chain", self.schedules))

    def value(self, step: int, base_lr: float) -> float:
        lr = base_lr
        for schedule in self.schedules:
            lr = schedule.value(step, lr)
        return lr


def step(step_size: int, gamma: float = 0.1) -> Step:
    """Multiply the rate by gamma every step_size steps (torch's StepLR)."""
    return Step(step_size, gamma)


def cosine(T_max: int, eta_min: float = 0.0) -> Cosine:  # noqa: N803 - torch's spelling
    """Anneal from base_lr to eta_min along a half cosine over T_max steps (torch's CosineAnnealingLR)."""
    return Cosine(T_max, eta_min)


def linear(start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5) -> Linear:
    """Scale base_lr by a factor moving linearly from start_factor to end_factor in total_iters steps (LinearLR)."""
    return Linear(start_factor, end_factor, total_iters)


def linear_warmup(warmup_steps: int, start_factor: float = 1.0 / 3) -> Linear:
    """Ramp from start_factor * base_lr up to base_lr over warmup_steps steps, then hold (LinearLR to 1.0)."""
    return Linear(start_factor, 1.0, warmup_steps)


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Sequential:
    """Switch schedule at each milestone step, the next one starting from its step 0 (torch's SequentialLR)."""
    return Sequential(tuple(schedules), tuple(milestones))


def chain(schedules: Sequence[Schedule]) -> Chain:
    """Apply several schedules at once, multiplying their factors (torch's ChainedScheduler)."""
    return Chain(tuple(schedules))
