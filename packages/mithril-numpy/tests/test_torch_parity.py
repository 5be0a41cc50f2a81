"""Every catalogue layer and the quick start CNN against torch.nn, training and inference."""

from __future__ import annotations

import pytest

import mithril as ml
from mithril.testing import test_dtype
from mithril.testing.torch_parity import PARITY_CASES, ParityCase, check_torch_parity

pytest.importorskip("torch")


def backend() -> ml.Backend:
    dtype = test_dtype(ml.float64)
    if dtype not in ml.NumpyBackend.supported_dtypes or dtype is ml.float16:
        pytest.skip(f"torch parity runs in float64 and float32, not {dtype.name}")
    return ml.NumpyBackend(dtype=dtype)


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch(case: ParityCase, training: bool) -> None:
    check_torch_parity(case, backend(), training=training)
