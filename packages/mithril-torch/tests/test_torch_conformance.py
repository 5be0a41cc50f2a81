"""The core's conformance kit on torch, plus its CUDA variants for a few cases."""

from __future__ import annotations

import pytest
from torch_devices import CUDA

import mithril as ml
from mithril.testing import CASES, Case, check_case, test_dtype
from mithril.testing.conformance import BackendConformance
from mithril.testing.torch_parity import PARITY_CASES, ParityCase, check_torch_parity

CUDA_CASES = [
    "linear",
    "pow",
    "matmul",
    "max_axis_keepdim",
    "conv2d",
    "max_pool2d_padded",
    "batch_norm",
    "cross_entropy_weighted_smoothed",
    "dropout_zero",
]


class TestTorchConformance(BackendConformance):
    """The core's kit on CPU with the dtype of the nox cell (float64 by default)."""

    backend_name = "torch"


@pytest.mark.parametrize("case", [c for c in CASES if c.name in CUDA_CASES], ids=lambda c: c.name)
@pytest.mark.cuda
@CUDA
def test_case_matches_numpy_on_cuda(case: Case) -> None:
    check_case(case, ml.TorchBackend(dtype=test_dtype(ml.float64), device="cuda"), ml.NumpyBackend(dtype=ml.float64))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "case", [c for c in PARITY_CASES if c.name in ("QuickstartCNN", "CrossEntropyLoss_options")], ids=lambda c: c.name
)
@pytest.mark.cuda
@CUDA
def test_matches_torch_nn_on_cuda(case: ParityCase, training: bool) -> None:
    check_torch_parity(case, ml.TorchBackend(dtype=ml.float64, device="cuda"), training=training)
