"""ml.optim on NumPy arrays equals torch.optim, torch's gradient clipping and lr schedulers (float64)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the torch parity tests need torch (the `parity` nox session installs it)")

import mithril as ml  # noqa: E402
from mithril.testing.optim_parity import OPTIMIZER_CASES, OptimCase, check_clip_parity, check_optimizer_parity  # noqa: E402


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda case: case.name)
def test_optimizer_matches_torch(case: OptimCase) -> None:
    check_optimizer_parity(case, ml.NumpyBackend(dtype=ml.float64))


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "within"])
def test_clip_grad_norm_matches_torch(max_norm: float) -> None:
    check_clip_parity(ml.NumpyBackend(dtype=ml.float64), max_norm)
