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


@pytest.mark.parametrize("target", [[0, 3, 2, 1, 1], [-100, 3, 2, -100, 1], [-100] * 5])
def test_loss_and_its_gradient_share_one_softmax_bit_for_bit(target: list[int]) -> None:
    """forward_backward computes the common cross-entropy's softmax once (fusions.py): its loss and gradients
    equal the separate kernels' bit for bit, ignored targets and the all-ignored NaN included."""
    from mithril.models import CrossEntropyLoss, Linear, Model

    model = Model()
    model |= Linear(dimension=4)(input="input", output="logits")
    model |= CrossEntropyLoss()(input="logits", target="target", output="output")
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes={"input": [5, 3]})
    rng = np.random.default_rng(1)
    params = {"linear_0.weight": rng.standard_normal((4, 3)), "linear_0.bias": rng.standard_normal(4)}
    x, t, g = rng.standard_normal((5, 3)), np.array(target, dtype=np.int64), np.asarray(0.7)
    with np.errstate(all="ignore"):
        outputs, grads = compiled.evaluate(params, {"input": x, "target": t}, {"output": g})
        logits = x @ params["linear_0.weight"].T + params["linear_0.bias"]
        want_loss = kernels.cross_entropy(logits, t, None, -100, "mean", 0.0)
        want_grad = kernels.cross_entropy_grad(logits, t, g)
    assert "cross_entropy_softmax" in compiled.program.source
    assert np.array_equal(outputs["output"], want_loss, equal_nan=True)
    assert np.array_equal(grads["linear_0.weight"], want_grad.T @ x, equal_nan=True)
    assert np.array_equal(grads["linear_0.bias"], want_grad.sum(0), equal_nan=True)
