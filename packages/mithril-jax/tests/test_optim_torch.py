"""ml.optim on jax arrays equals torch.optim and torch's clipping (float64), eagerly and under one jax.jit."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="the torch parity tests need torch (the `parity` nox session installs it)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mithril as ml  # noqa: E402
from mithril.testing.optim_parity import (  # noqa: E402
    OPTIMIZER_CASES,
    OptimCase,
    Update,
    check_clip_parity,
    check_optimizer_parity,
)


def _backend() -> ml.Backend:
    return ml.JaxBackend(dtype=ml.float64)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_optimizer_matches_torch(case: OptimCase) -> None:
    check_optimizer_parity(case, _backend())


def _jitted(optimizer: ml.optim.Optimizer, traces: list[int]) -> Update:
    """The update as one jax.jit program, step and lr passed as traced arrays (as a jitted training step has them)."""
    ops = ml.optim.foreach_ops(_backend())

    def update(params: Any, grads: Any, state: Any, step: Any, lr: Any) -> tuple[Any, Any]:
        traces[0] += 1
        return optimizer.update(params, grads, state, step=step, lr=lr, ops=ops)

    compiled = jax.jit(update)

    def call(params: Any, grads: Any, state: Any, step: int, lr: float) -> tuple[Any, Any]:
        return compiled(params, grads, state, jnp.asarray(step, jnp.int32), jnp.asarray(lr, jnp.float64))

    return call


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_optimizer_under_jit_with_traced_step_and_lr_matches_torch(case: OptimCase) -> None:
    traces = [0]
    check_optimizer_parity(case, _backend(), update=_jitted(case.optimizer, traces))
    assert traces[0] == 1, f"the update traced {traces[0]} times: step 1 and later steps must be one program"


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "within"])
def test_clip_grad_norm_matches_torch(max_norm: float) -> None:
    check_clip_parity(_backend(), max_norm)
