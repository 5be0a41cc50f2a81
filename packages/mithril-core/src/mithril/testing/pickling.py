"""Round trips of compiled models (pickle and deep copy) for each backend's tests: a copy is recompiled from its
recipe and must give the same outputs, gradients and model state as the original."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import compiler
from ..backend import Backend
from ..errors import CompositionError
from ..models import Model
from .models import quickstart_cnn1d, quickstart_mlp

__all__ = ["ROUND_TRIPS", "assert_same", "check_empty_model_refused", "check_round_trip", "check_state_round_trip"]

ROUND_TRIPS: dict[str, Callable[[Any], Any]] = {
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "deepcopy": copy.deepcopy,
}


def assert_same(backend: Backend, a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """Equal keys and bit-equal values, compared as NumPy arrays."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for key in a:
        np.testing.assert_array_equal(backend.to_numpy(a[key]), backend.to_numpy(b[key]), err_msg=key)


def check_round_trip(backend: Backend, trip: str) -> None:
    """The quick start MLP's copy has a backend of its own and the original's outputs and gradients."""
    compiled = compiler.compile(quickstart_mlp(), backend, {"input": [8, 20]})
    copied = ROUND_TRIPS[trip](compiled)
    assert type(copied.backend) is type(backend) and copied.backend is not backend
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(8, 20)}
    cotangents = {"output": backend.ones(8, 10)}
    outputs, grads = compiled.evaluate(params, inputs, cotangents)
    copied_outputs, copied_grads = copied.evaluate(params, inputs, cotangents)
    assert_same(backend, outputs, copied_outputs)
    assert_same(backend, grads, copied_grads)


def check_state_round_trip(backend: Backend, trip: str) -> None:
    """BatchNorm running statistics travel with the copy, as backend arrays, and keep updating alike."""
    compiled = compiler.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]})
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(4, 4, 8)}
    compiled.evaluate(params, inputs)
    assert compiled.state is not None
    copied = ROUND_TRIPS[trip](compiled)
    assert copied.state is not None
    assert all(copied.backend.is_array(v) for v in copied.state.values())
    assert_same(backend, compiled.state, copied.state)
    assert_same(backend, compiled.evaluate(params, inputs), copied.evaluate(params, inputs))
    assert_same(backend, compiled.state, copied.state)


def check_empty_model_refused(backend: Backend) -> None:
    """Compiling a model without layers is a CompositionError naming the model."""
    try:
        compiler.compile(Model(name="empty"), backend)
    except CompositionError as error:
        assert "Model 'empty' has no layers" in str(error), str(error)
    else:
        raise AssertionError("compiling an empty model raised nothing")
