"""NumPy: compiled models pickle and deep-copy (recompiled from their recipe); an empty model is refused."""

from __future__ import annotations

from typing import Any

import pytest

import mithril as ml
from mithril.testing.pickling import (
    ROUND_TRIPS,
    check_empty_model_refused,
    check_round_trip,
    check_state_round_trip,
)


@pytest.fixture(params=["float32", "float64"])
def backend(request: pytest.FixtureRequest) -> ml.NumpyBackend:
    """The NumPy backend in each dtype it pickles with."""
    return ml.NumpyBackend(dtype=request.param)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_round_trip_gives_the_same_outputs_and_gradients(trip: str, backend: Any) -> None:
    check_round_trip(backend, trip)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_batchnorm_state_travels_and_keeps_updating_alike(trip: str, backend: Any) -> None:
    check_state_round_trip(backend, trip)


def test_compiling_an_empty_model_is_a_composition_error(backend: Any) -> None:
    check_empty_model_refused(backend)
