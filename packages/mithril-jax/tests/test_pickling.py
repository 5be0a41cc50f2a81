"""JAX: compiled models pickle and deep-copy (recompiled from their recipe); an empty model is refused."""

from __future__ import annotations

import pickle
from typing import Any

import jax
import pytest

import mithril as ml
from mithril.testing.models import quickstart_mlp
from mithril.testing.pickling import (
    ROUND_TRIPS,
    check_empty_model_refused,
    check_round_trip,
    check_state_round_trip,
)
from mithril_jax import JaxBackend

NO_GPU = pytest.mark.skipif(jax.default_backend() != "gpu", reason="jax finds no GPU")
DEVICES = ["cpu", pytest.param("gpu", marks=NO_GPU)]


@pytest.fixture(params=DEVICES)
def backend(request: pytest.FixtureRequest) -> JaxBackend:
    """The JAX backend on each platform present; the device travels with the recipe."""
    return JaxBackend(device=request.param)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_round_trip_gives_the_same_outputs_and_gradients(trip: str, backend: Any) -> None:
    check_round_trip(backend, trip)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_batchnorm_state_travels_and_keeps_updating_alike(trip: str, backend: Any) -> None:
    check_state_round_trip(backend, trip)


def test_compiling_an_empty_model_is_a_composition_error(backend: Any) -> None:
    check_empty_model_refused(backend)


def test_jit_off_travels_with_the_recipe(backend: JaxBackend) -> None:
    compiled = ml.compile(quickstart_mlp(), backend, {"input": [2, 20]}, jit=False)
    assert not pickle.loads(pickle.dumps(compiled)).options.jit
