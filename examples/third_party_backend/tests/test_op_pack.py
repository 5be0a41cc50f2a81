"""The `mithril_register_ops` hook: a plugin object overrides one op of another backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.backend import Kernel
from mithril.models import Linear, Model, Relu
from mithril.plugins import registry


class CountingRelu:
    """An op pack: replaces the NumPy backend's relu by a kernel that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def relu(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.maximum(x, 0)

    @ml.hookimpl
    def mithril_register_ops(self, backend_name: str, register: Callable[[str, Any], None]) -> None:
        if backend_name == "numpy":
            register("relu", Kernel(self.relu))


@pytest.fixture
def op_pack() -> Iterator[CountingRelu]:
    """The op pack, registered for one test and unregistered afterwards."""
    pack = CountingRelu()
    ml.register_plugin(pack, name="counting-relu")
    try:
        yield pack
    finally:
        # No public unregister exists yet; the registry's pluggy manager has one.
        registry.manager.unregister(pack)


def _compiled(backend: ml.Backend) -> ml.CompiledModel:
    model = Model()
    model |= Linear(dimension=4)
    model += Relu()
    return ml.compile(model, backend, shapes={"input": [2, 3]})


def test_the_override_is_compiled_into_the_model(op_pack: CountingRelu) -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = _compiled(backend)
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(2, 3)}
    out = compiled.evaluate(params, x)["output"]
    _, grads = compiled.evaluate(params, x, {"output": backend.ones(2, 4)})
    assert op_pack.calls == 2
    assert "np.maximum" not in compiled.code.split("def forward_backward")[0]
    expected = np.maximum(x["input"] @ params["linear_0.weight"].T + params["linear_0.bias"], 0)
    np.testing.assert_allclose(out, expected)
    assert set(grads) == set(params)


def test_other_backends_keep_their_own_op(op_pack: CountingRelu) -> None:
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = _compiled(backend)
    compiled.evaluate(compiled.randomize_params(seed=0), {"input": backend.randn(2, 3)})
    assert op_pack.calls == 0


def test_nothing_leaks_once_the_plugin_is_gone() -> None:
    assert "relu" not in registry.extra_ops("numpy")
    assert "np.maximum" in _compiled(ml.NumpyBackend()).code
