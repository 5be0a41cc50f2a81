"""The optimizer contract: a pure update rule over flat dicts of arrays, its state plain data.

State is one flat dict keyed "<slot>/<param key>" (e.g. "exp_avg/linear_0.weight"), the slot
names torch.optim uses in its per-parameter state; the step count and learning rate are passed
in, so the same rule runs eagerly or traced (under `jax.jit`, with a traced step and lr).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import KeyNotFoundError
from .foreach import Foreach

__all__ = ["Optimizer", "check_flag", "check_number", "check_pair"]


class Optimizer(ABC):
    """Base of `ml.optim` optimizers: `init` builds the state, `update` returns new params and state.

    Subclasses are frozen dataclasses whose fields are torch.optim's constructor arguments.
    """

    lr: float

    @property
    @abstractmethod
    def slots(self) -> tuple[str, ...]:
        """The state slots this configuration keeps per parameter (torch.optim's state names)."""

    @abstractmethod
    def rule(
        self, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any, ops: Foreach
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        """The update rule on parallel lists: (new params, new state per slot)."""

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments as JSON-ready values: `type(opt)(**opt.hyperparameters())` rebuilds it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}

    def init(self, params: Mapping[str, Any], ops: Foreach) -> dict[str, Any]:
        """Zero state for `params`: a flat dict keyed "<slot>/<param key>", slot by slot."""
        keys = list(params)
        arrays = [params[key] for key in keys]
        return {f"{slot}/{key}": value for slot in self.slots for key, value in zip(keys, ops.zeros_like(arrays))}

    def update(
        self,
        params: Mapping[str, Any],
        grads: Mapping[str, Any],
        opt_state: Mapping[str, Any],
        *,
        step: Any,
        lr: Any = None,
        ops: Foreach,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One optimizer step: (new params, new state); the inputs are never modified.

        step: the 1-based count of this step (a Python int, or an integer array when traced);
        lr: this step's learning rate (a float or 0-d array), `self.lr` when None.
        """
        owner = f"ml.optim.{type(self).__name__}.update"
        keys = tuple(params)
        _check_keys(owner, "grads", grads, params.keys())
        names, every_name = _state_keys(self.slots, keys)
        _check_keys(owner, "opt_state", opt_state, every_name)
        if isinstance(step, bool) or isinstance(step, float):
            raise TypeError(f"{owner}: step must be an int (1 for the first step), got {step!r}")
        if isinstance(step, int) and step < 1:
            raise ValueError(f"{owner}: step counts from 1 (the first optimizer step), got {step}")
        if lr is None:
            lr = self.lr
        elif isinstance(lr, (int, float)) and not lr >= 0:
            raise ValueError(f"{owner}: lr must be >= 0, got {lr!r}")
        if not keys:
            return {}, {}
        param_list = [params[key] for key in keys]
        groups = [
            param_list,
            [grads[key] for key in keys],
            *([opt_state[n] for n in slot_names] for slot_names in names),
        ]
        joined = ops.join(groups)
        lists = groups if joined is None else joined
        new_params, new_state = ops.run_rule(self, lists[0], lists[1], dict(zip(self.slots, lists[2:])), step, lr)
        if joined is not None:
            new_params = ops.split(new_params[0], param_list)
            new_state = {slot: ops.split(new_state[slot][0], param_list) for slot in self.slots}
        flat = {
            name: value
            for slot, slot_names in zip(self.slots, names)
            for name, value in zip(slot_names, new_state[slot])
        }
        return dict(zip(keys, new_params)), flat


@functools.lru_cache(maxsize=64)
def _state_keys(slots: tuple[str, ...], keys: tuple[str, ...]) -> tuple[tuple[tuple[str, ...], ...], frozenset[str]]:
    """The state keys of each slot in param order, and all of them (cached: every step asks for the same)."""
    names = tuple(tuple(f"{slot}/{key}" for key in keys) for slot in slots)
    return names, frozenset(name for slot_names in names for name in slot_names)


def _check_keys(owner: str, what: str, given: Mapping[str, Any], expected: Any) -> None:
    """A KeyNotFoundError naming the missing and unexpected keys when `given` is not keyed like `expected`."""
    if given.keys() == expected:
        return
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    hint = " (was the state built by opt.init for these params and this optimizer?)" if what == "opt_state" else ""
    raise KeyNotFoundError(f"{owner}: {what} is keyed unlike the params{hint}; missing {missing}, unexpected {extra}")


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    at_least: float = 0.0,
    below: float | None = None,
    at_most: float | None = None,
) -> float:
    """`value` as a float; a TypeError or ValueError naming owner, argument, value and valid range otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if below is not None:
        valid, ok = f"in [{at_least:g}, {below:g})", at_least <= number < below
    elif at_most is not None:
        valid, ok = f"in [{at_least:g}, {at_most:g}]", at_least <= number <= at_most
    else:
        valid, ok = f">= {at_least:g}", at_least <= number and math.isfinite(number)
    if not ok:
        raise ValueError(f"{owner}: {name} must be {valid}, got {value!r}")
    return number


def check_flag(owner: str, name: str, value: Any) -> bool:
    """`value` when it is a bool; a TypeError naming owner and argument otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_pair(owner: str, name: str, value: Any) -> tuple[float, float]:
    """`value` as a pair of floats, each in [0, 1) (Adam's betas)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{owner}: {name} must be a pair of numbers such as (0.9, 0.999), got {value!r}")
    first, second = (check_number(owner, f"{name}[{i}]", v, below=1.0) for i, v in enumerate(value))
    return first, second
