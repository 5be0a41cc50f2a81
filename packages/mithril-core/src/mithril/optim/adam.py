"""Adam and AdamW with torch.optim's update rules (L2 or decoupled weight decay, AMSGrad)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Optimizer, check_flag, check_number, check_pair
from .foreach import Foreach

__all__ = ["Adam", "AdamW"]


@dataclass(frozen=True)
class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first and second moments, L2 weight decay added to the gradient.

    State slots: "exp_avg", "exp_avg_sq", and "max_exp_avg_sq" with amsgrad.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    def __post_init__(self) -> None:
        owner = f"ml.optim.{type(self).__name__}"
        object.__setattr__(self, "lr", check_number(owner, "lr", self.lr))
        object.__setattr__(self, "betas", check_pair(owner, "betas", self.betas))
        object.__setattr__(self, "eps", check_number(owner, "eps", self.eps))
        object.__setattr__(self, "weight_decay", check_number(owner, "weight_decay", self.weight_decay))
        check_flag(owner, "amsgrad", self.amsgrad)

    # AdamW shrinks the parameters by lr * weight_decay instead of adding the decay to the gradient.
    decoupled_weight_decay: ClassVar[bool] = False

    @property
    def slots(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def rule(
        self, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any, ops: Foreach
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                params = ops.mul(params, 1 - lr * self.weight_decay)
            else:
                grads = ops.add(grads, params, alpha=self.weight_decay)
        exp_avg = ops.lerp(state["exp_avg"], grads, 1 - beta1)
        exp_avg_sq = ops.addcmul(ops.mul(state["exp_avg_sq"], beta2), grads, grads, value=1 - beta2)
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        second = exp_avg_sq
        if self.amsgrad:
            second = new_state["max_exp_avg_sq"] = ops.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        step = ops.scalar(step, params[0])  # a traced count computes in the params' precision, not int -> float32
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = ops.add(ops.div(ops.sqrt(second), bias_correction2_sqrt), self.eps)
        return ops.addcdiv(params, exp_avg, denom, value=-(lr / bias_correction1)), new_state


@dataclass(frozen=True)
class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay before the step)."""

    weight_decay: float = 1e-2

    decoupled_weight_decay: ClassVar[bool] = True
