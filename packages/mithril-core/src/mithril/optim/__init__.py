"""`ml.optim`: optimizers equal to torch.optim, learning-rate schedules and gradient clipping.

Optimizers are pure: `opt.init(params, ops)` builds the state, `opt.update(...)` returns new
params and state; the array math runs through `foreach_ops(backend)`.
"""

from __future__ import annotations

from . import schedules
from .adam import Adam, AdamW
from .base import Optimizer
from .clip import clip_grad_norm, global_norm
from .foreach import Foreach, NamespaceForeach, foreach_ops
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Foreach",
    "NamespaceForeach",
    "Optimizer",
    "RMSprop",
    "clip_grad_norm",
    "foreach_ops",
    "global_norm",
    "schedules",
]
