"""Loss layers against torch.nn.functional on this backend: every form and rank, extreme logits (issue 13)."""

from __future__ import annotations

import pytest

import mithril as ml
from mithril.testing import test_dtype
from mithril.testing.loss_parity import EXTREME_CASES, LOSS_CASES, LossCase, check_loss_parity

pytest.importorskip("torch", reason="the loss parity tests compare with torch.nn.functional")
DTYPE = test_dtype()
CASES = [*LOSS_CASES, *EXTREME_CASES.get(DTYPE.name, [])]


@pytest.mark.skipif(DTYPE.name not in EXTREME_CASES, reason="torch parity is checked in float32 and float64")
@pytest.mark.parametrize("training", [True, False], ids=["gradients", "forward"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_loss_matches_torch(case: LossCase, training: bool) -> None:
    check_loss_parity(case, ml.GGMLBackend(dtype=DTYPE), training)
