"""GGML: compiled models pickle and deep-copy (recompiled from their recipe); an empty model is refused."""

from __future__ import annotations

from typing import Any

import pytest

import mithril as ml
from mithril.testing.models import quickstart_mlp
from mithril.testing.pickling import (
    ROUND_TRIPS,
    assert_same,
    check_empty_model_refused,
    check_round_trip,
    check_state_round_trip,
)
from mithril_ggml import GGMLBackend


@pytest.fixture
def backend() -> GGMLBackend:
    """The GGML backend with float32 weights (the ones gradients need) and its own thread option."""
    return GGMLBackend(n_threads=2)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_round_trip_gives_the_same_outputs_and_gradients(trip: str, backend: Any) -> None:
    check_round_trip(backend, trip)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_batchnorm_state_travels_and_keeps_updating_alike(trip: str, backend: Any) -> None:
    check_state_round_trip(backend, trip)


def test_compiling_an_empty_model_is_a_composition_error(backend: Any) -> None:
    check_empty_model_refused(backend)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_quantized_model_keeps_its_quantization_and_outputs(trip: str) -> None:
    backend = GGMLBackend(quantize="int8", n_threads=2)
    compiled = ml.compile(quickstart_mlp(), backend, {"input": [8, 20]}, inference=True)
    copied = ROUND_TRIPS[trip](compiled)
    assert (copied.backend.quantize, copied.backend.n_threads) == ("int8", 2)
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(8, 20)}
    assert_same(backend, compiled.evaluate(params, inputs), copied.evaluate(params, inputs))
