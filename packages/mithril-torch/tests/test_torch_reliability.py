"""The float dtype rule, threads and in-place writes on torch (issue 13): the core's reliability checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import mithril as ml
from mithril.backend import Backend
from mithril.testing.reliability import BackendReliability, compiled_mlp


class TestTorchReliability(BackendReliability):
    backend_name = "torch"

    def thread_setup(self) -> Callable[[], None]:
        """Give each worker the main thread's intra-op thread count.

        OpenMP keeps it per OS thread: a new thread runs matmuls with its default count, so its
        float sums may differ in the last bit from the main thread's.
        """
        count = torch.get_num_threads()
        return lambda: torch.set_num_threads(count)

    def write_in_place(self, backend: Backend, params: dict[str, Any], key: str, value: np.ndarray) -> None:
        """torch's in-place copy into the parameter tensor the caller holds."""
        with torch.no_grad():
            params[key].copy_(torch.from_numpy(value))


@pytest.mark.parametrize("dtype", [ml.float32, ml.float64])
def test_numpy_output_gradients_name_the_tensor_type_expected(dtype: ml.DType) -> None:
    backend = ml.TorchBackend(dtype=dtype)
    compiled = compiled_mlp(backend)
    params = compiled.randomize_params(seed=0)
    grads = {"output": np.ones((4, 3), backend.native_dtype(dtype).__str__().removeprefix("torch."))}
    with pytest.raises(
        TypeError,
        match=r"output_gradients\['output'\]: expected an array of backend 'torch' like output 'output', "
        r"got ndarray \(pass a torch.Tensor",
    ):
        compiled.evaluate(params, {"input": backend.randn(4, 5)}, grads)


def test_output_gradients_on_another_device_are_refused() -> None:
    backend = ml.TorchBackend()
    compiled = compiled_mlp(backend)
    params = compiled.randomize_params(seed=0)
    grads = {"output": torch.ones(4, 3, device="meta")}
    with pytest.raises(ValueError, match=r"output_gradients\['output'\]: tensor is on device 'meta', expected 'cpu'"):
        compiled.evaluate(params, {"input": backend.randn(4, 5)}, grads)
