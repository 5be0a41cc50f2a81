"""Stochastic gradient descent with torch.optim.SGD's update rule (momentum, dampening, Nesterov, L2 decay)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Optimizer, check_flag, check_number
from .foreach import Foreach

__all__ = ["SGD"]


@dataclass(frozen=True)
class SGD(Optimizer):
    """torch.optim.SGD: g += weight_decay * p; buf = momentum * buf + (1 - dampening) * g (buf = g at step 1).

    With momentum the step is buf (Nesterov: g + momentum * buf); p -= lr * step. State slot:
    "momentum_buffer" (only with momentum).
    """

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        owner = "ml.optim.SGD"
        object.__setattr__(self, "lr", check_number(owner, "lr", self.lr))
        object.__setattr__(self, "momentum", check_number(owner, "momentum", self.momentum))
        object.__setattr__(self, "dampening", check_number(owner, "dampening", self.dampening, at_most=1.0))
        object.__setattr__(self, "weight_decay", check_number(owner, "weight_decay", self.weight_decay))
        check_flag(owner, "nesterov", self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"{owner}: nesterov=True needs momentum > 0 and dampening == 0, "
                f"got momentum={self.momentum!r}, dampening={self.dampening!r}"
            )

    @property
    def slots(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def rule(
        self, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any, ops: Foreach
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        if self.weight_decay != 0:
            grads = ops.add(grads, params, alpha=self.weight_decay)
        new_state: dict[str, list[Any]] = {}
        if self.momentum != 0:
            first = step == 1  # torch starts the buffer as a copy of the gradient, undamped
            if first is True:
                buf = ops.mul(grads, 1.0)
            else:
                buf = ops.add(ops.mul(state["momentum_buffer"], self.momentum), grads, alpha=1 - self.dampening)
                if first is not False:  # traced or array step: select per element, one program for every step
                    buf = ops.where(first, grads, buf)
            new_state["momentum_buffer"] = buf
            grads = ops.add(grads, buf, alpha=self.momentum) if self.nesterov else buf
        return ops.add(params, grads, alpha=-lr), new_state
