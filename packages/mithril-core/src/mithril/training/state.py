"""`TrainState`: everything a training run carries from one step to the next, as plain data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainState"]


@dataclass(frozen=True)
class TrainState:
    """Parameters, model state (e.g. BatchNorm running statistics), optimizer state and the step count.

    Dicts of backend arrays and a number. `Trainer.step` returns a new state and leaves this one
    as it was, so a state can be kept, compared or saved at any point.
    """

    params: dict[str, Any]
    model_state: dict[str, Any]
    opt_state: dict[str, Any]
    step: int = 0

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
