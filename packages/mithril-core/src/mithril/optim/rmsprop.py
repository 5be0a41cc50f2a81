"""RMSprop with torch.optim.RMSprop's update rule (centered, momentum, L2 weight decay)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Optimizer, check_flag, check_number
from .foreach import Foreach

__all__ = ["RMSprop"]


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """torch.optim.RMSprop: divides the gradient by a running root mean square (centered: its deviation).

    State slots: "square_avg", "grad_avg" when centered, "momentum_buffer" with momentum.
    """

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    def __post_init__(self) -> None:
        owner = "ml.optim.RMSprop"
        object.__setattr__(self, "lr", check_number(owner, "lr", self.lr))
        object.__setattr__(self, "alpha", check_number(owner, "alpha", self.alpha, at_most=1.0))
        object.__setattr__(self, "eps", check_number(owner, "eps", self.eps))
        object.__setattr__(self, "weight_decay", check_number(owner, "weight_decay", self.weight_decay))
        object.__setattr__(self, "momentum", check_number(owner, "momentum", self.momentum))
        check_flag(owner, "centered", self.centered)

    @property
    def slots(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("grad_avg",) if self.centered else ())
            + (("momentum_buffer",) if self.momentum > 0 else ())
        )

    def rule(
        self, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any, ops: Foreach
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        if self.weight_decay != 0:
            grads = ops.add(grads, params, alpha=self.weight_decay)
        square_avg = ops.addcmul(ops.mul(state["square_avg"], self.alpha), grads, grads, value=1 - self.alpha)
        new_state = {"square_avg": square_avg}
        if self.centered:
            grad_avg = new_state["grad_avg"] = ops.lerp(state["grad_avg"], grads, 1 - self.alpha)
            avg = ops.sqrt(ops.addcmul(square_avg, grad_avg, grad_avg, value=-1.0))
        else:
            avg = ops.sqrt(square_avg)
        avg = ops.add(avg, self.eps)
        if self.momentum > 0:
            buf = new_state["momentum_buffer"] = ops.addcdiv(
                ops.mul(state["momentum_buffer"], self.momentum), grads, avg
            )
            return ops.add(params, buf, alpha=-lr), new_state
        return ops.addcdiv(params, grads, avg, value=-lr), new_state
