"""GGML: compiled models pickle and deep-copy (recompiled from their recipe); an empty model is refused."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.models import Model
from mithril.testing.models import quickstart_cnn1d, quickstart_mlp
from mithril_ggml import GGMLBackend


@pytest.fixture
def backend() -> GGMLBackend:
    """The GGML backend with float32 weights (the ones gradients need) and its own thread option."""
    return GGMLBackend(n_threads=2)


ROUND_TRIPS = {"pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "deepcopy": copy.deepcopy}


def _same(backend: Any, a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Equal keys and equal values, compared as NumPy arrays."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(backend.to_numpy(a[key]), backend.to_numpy(b[key]), err_msg=key)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_round_trip_gives_the_same_outputs_and_gradients(trip: str, backend: Any) -> None:
    compiled = ml.compile(quickstart_mlp(), backend, {"input": [8, 20]})
    copied = ROUND_TRIPS[trip](compiled)
    assert type(copied.backend) is type(backend) and copied.backend is not backend
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(8, 20)}
    cotangents = {"output": backend.ones(8, 10)}
    outputs, grads = compiled.evaluate(params, inputs, cotangents)
    copied_outputs, copied_grads = copied.evaluate(params, inputs, cotangents)
    _same(backend, outputs, copied_outputs)
    _same(backend, grads, copied_grads)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_batchnorm_state_travels_and_keeps_updating_alike(trip: str, backend: Any) -> None:
    compiled = ml.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]})
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(4, 4, 8)}
    compiled.evaluate(params, inputs)
    assert compiled.state is not None
    copied = ROUND_TRIPS[trip](compiled)
    assert copied.state is not None
    assert all(copied.backend.is_array(v) for v in copied.state.values())
    _same(backend, compiled.state, copied.state)
    _same(backend, compiled.evaluate(params, inputs), copied.evaluate(params, inputs))
    _same(backend, compiled.state, copied.state)


def test_compiling_an_empty_model_is_a_composition_error(backend: Any) -> None:
    with pytest.raises(ml.CompositionError, match=r"Model 'empty' has no layers"):
        ml.compile(Model(name="empty"), backend)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_quantized_model_keeps_its_quantization_and_outputs(trip: str) -> None:
    backend = GGMLBackend(quantize="int8", n_threads=2)
    compiled = ml.compile(quickstart_mlp(), backend, {"input": [8, 20]}, inference=True)
    copied = ROUND_TRIPS[trip](compiled)
    assert (copied.backend.quantize, copied.backend.n_threads) == ("int8", 2)
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(8, 20)}
    _same(backend, compiled.evaluate(params, inputs), copied.evaluate(params, inputs))
