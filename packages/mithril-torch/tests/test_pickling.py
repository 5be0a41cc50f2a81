"""Torch: compiled models pickle and deep-copy (recompiled from their recipe); an empty model is refused."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch_devices

import mithril as ml
from mithril.testing.pickling import (
    ROUND_TRIPS,
    check_empty_model_refused,
    check_round_trip,
    check_state_round_trip,
)
from mithril_torch import TorchBackend


@pytest.fixture(params=torch_devices.DEVICES)
def backend(request: pytest.FixtureRequest) -> TorchBackend:
    """The torch backend on each device present; the device travels with the recipe."""
    return TorchBackend(device=request.param)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_round_trip_gives_the_same_outputs_and_gradients(trip: str, backend: Any) -> None:
    check_round_trip(backend, trip)


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_batchnorm_state_travels_and_keeps_updating_alike(trip: str, backend: Any) -> None:
    check_state_round_trip(backend, trip)


def test_compiling_an_empty_model_is_a_composition_error(backend: Any) -> None:
    check_empty_model_refused(backend)


def test_the_device_and_dtype_travel_with_the_backend(backend: TorchBackend) -> None:
    copied = pickle.loads(pickle.dumps(TorchBackend(dtype=ml.float64, device=backend.device)))
    assert (copied.dtype, copied.device) == (ml.float64, backend.device)
    assert copied.randn(2).device.type == backend.randn(2).device.type
