"""Loss layers against torch.nn.functional on this backend: every form and rank, extreme logits (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

import mithril as ml
from mithril.testing import test_dtype
from mithril.testing.loss_parity import EXTREME_CASES, LOSS_CASES, LossCase, check_loss_parity
from mithril_numpy import kernels

pytest.importorskip("torch", reason="the loss parity tests compare with torch.nn.functional")
DTYPE = test_dtype()
CASES = [*LOSS_CASES, *EXTREME_CASES.get(DTYPE.name, [])]


@pytest.mark.skipif(DTYPE.name not in EXTREME_CASES, reason="torch parity is checked in float32 and float64")
@pytest.mark.parametrize("training", [True, False], ids=["gradients", "forward"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_loss_matches_torch(case: LossCase, training: bool) -> None:
    check_loss_parity(case, ml.NumpyBackend(dtype=DTYPE), training)


@pytest.mark.parametrize("target", [[0, 3, 2, 1, 1], [-100, 3, 2, -100, 1], [-100] * 5, [], [4, 0, 1, 2, 3]])
def test_cross_entropy_grad_kernel_equals_its_decomposition_bit_for_bit(target: list[int]) -> None:
    """The fused kernel is the decomposition's arithmetic: (softmax * valid - one_hot) * g / count, NaN included."""
    t = np.array(target, dtype=np.int64)
    x = np.random.default_rng(0).standard_normal((len(t), 4))
    g = np.asarray(1.3)
    onehot = kernels.one_hot(t, 4, x.dtype)
    with np.errstate(all="ignore"):
        want = (kernels.softmax(x, 1) * onehot.sum(1, keepdims=True) - onehot) * (g / onehot.sum())
        got = kernels.cross_entropy_grad(x, t, g)
    assert got.dtype == x.dtype and np.array_equal(got, want, equal_nan=True)
