"""The float dtype rule, threads and in-place writes on JAX (issue 13): the core's reliability checks.

JAX arrays are immutable, so "in place" means the caller puts a new array under the key; NumPy
arrays passed to a JAX model can be written in place. With jax's x64 mode off, jit turns NumPy
float64 arrays into float32 silently: the compiled model tests their dtype before the call.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

import mithril as ml
from mithril.backend import Backend
from mithril.testing.reliability import DTYPE_PAIRS, ROLES, BackendReliability, compiled_mlp


class TestJaxReliability(BackendReliability):
    backend_name = "jax"

    def write_in_place(self, backend: Backend, params: dict[str, Any], key: str, value: np.ndarray) -> None:
        """A jax array cannot be written: the caller's dict gets a new one."""
        params[key] = backend.array(value)


class TestJaxReliabilityWithoutJit(TestJaxReliability):
    compile_options: dict[str, Any] = {"jit": False}


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("model_dtype", "given"), DTYPE_PAIRS, ids=["f32-model-f64-given", "f64-model-f32-given"])
def test_numpy_arrays_of_another_float_dtype_are_refused_with_x64_off(
    role: str, model_dtype: ml.DType, given: ml.DType, jit: bool
) -> None:
    backend = ml.JaxBackend(dtype=model_dtype)
    checks = TestJaxReliabilityWithoutJit() if not jit else TestJaxReliability()
    numpy_dtype = np.float64 if given is ml.float64 else np.float32
    with jax.enable_x64(model_dtype is ml.float64):
        checks.check_dtype_refused(backend, role, lambda v: np.asarray(v, numpy_dtype), given.name)


def test_a_float64_call_after_float32_calls_is_refused_not_converted() -> None:
    backend = ml.JaxBackend()
    compiled = compiled_mlp(backend)
    params = compiled.randomize_params(seed=0)
    x = np.ones((4, 5), np.float32)
    with jax.enable_x64(False):
        compiled.evaluate(params, {"input": x})  # traced and cached for float32
        compiled.evaluate(params, {"input": x}, {"output": np.ones((4, 3), np.float32)})
        with pytest.raises(ml.DTypeMismatchError, match=r"inputs\['input'\]: expected dtype float32.*got float64"):
            compiled.evaluate(params, {"input": x.astype(np.float64)})
        with pytest.raises(
            ml.DTypeMismatchError, match=r"output_gradients\['output'\]: expected dtype float32.*float64"
        ):
            compiled.evaluate(params, {"input": x}, {"output": np.ones((4, 3))})


def test_numpy_parameters_written_in_place_are_seen() -> None:
    backend = ml.JaxBackend()
    compiled = compiled_mlp(backend)
    params = {k: np.array(v) for k, v in compiled.randomize_params(seed=0).items()}
    x = {"input": np.ones((4, 5), np.float32)}
    before = np.asarray(compiled.evaluate(params, x)["output"])
    params["linear_1.bias"][...] += 1.0
    np.testing.assert_allclose(np.asarray(compiled.evaluate(params, x)["output"]), before + 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_backend_array_does_not_alias_the_callers_numpy_buffer(dtype: type) -> None:
    backend = ml.JaxBackend(dtype=ml.float64 if dtype is np.float64 else ml.float32)
    host = np.arange(4096, dtype=dtype)
    placed = backend.array(host)
    host[:] = 7
    np.testing.assert_array_equal(np.asarray(placed), np.arange(4096, dtype=dtype))


@pytest.mark.parametrize("dropout", [False, True], ids=["checked-while-computing", "random-checked-first"])
def test_a_bad_class_target_in_a_train_step_raises_and_leaves_everything_as_it_was(dropout: bool) -> None:
    """The fused step checks class targets while XLA computes (before, for random models): either way the error
    names the value, the state passed in is untouched, the PRNG key is not consumed, and the next step is exact."""
    from mithril.models import CrossEntropyLoss, Dropout, Linear, Model, Relu

    model = Model()
    model |= Linear(dimension=8)(input="input")
    model += Relu()
    if dropout:
        model += Dropout(p=0.3)
    model += Linear(dimension=3)
    backend = ml.JaxBackend(dtype=ml.float64)
    trainer = ml.Trainer(model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=0.1),
                         shapes={"input": [None, 5]})  # fmt: skip
    x = np.random.default_rng(0).standard_normal((4, 5))
    backend.set_seed(1)
    state = trainer.init(seed=0)
    rng_before = backend.rng_state()
    with pytest.raises(ml.IndexRangeError, match=r"index 3, outside the valid range \[0, 3\)"):
        trainer.step(state, {"input": x, "target": np.array([0, 1, 2, 3])})
    np.testing.assert_array_equal(backend.rng_state(), rng_before)
    good = {"input": x, "target": np.array([0, 1, 2, 1])}
    after, _ = trainer.step(state, good)
    backend.set_seed(1)
    want, _ = trainer.step(trainer.init(seed=0), good)
    assert after.step == want.step == 1
    for key in want.params:
        np.testing.assert_array_equal(np.asarray(after.params[key]), np.asarray(want.params[key]), err_msg=key)
