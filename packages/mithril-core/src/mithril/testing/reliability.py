"""Reliability checks every backend runs (issue 13): the float dtype rule, threads, in-place writes.

A backend package runs them from its own tests:

    from mithril.testing.reliability import BackendReliability

    class TestReliability(BackendReliability):
        backend_name = "mybackend"

The dtype rule: a float array (input, parameter, state or output gradient) whose dtype is not the
model's is refused with a DTypeMismatchError naming the key, the expected and the given dtype,
before any work; integer index inputs are not float arrays and keep their own dtype. Threads: one
compiled model called from 8 threads gives bit-for-bit the single-threaded results, and a model
with dropout draws a distinct mask per call. In-place writes: the next call reads the arrays as
they are now. Override `write_in_place` where the framework's arrays are written another way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from .. import compiler, dtypes
from ..backend import Backend
from ..compiler import CompiledModel
from ..errors import DTypeMismatchError, ShapeError, UnsupportedError
from ..models import BatchNorm1d, CrossEntropyLoss, Dropout, Embedding, Linear, Model, Relu
from ..plugins import registry
from .models import quickstart_mlp

__all__ = ["BackendReliability", "DTYPE_PAIRS", "ROLES"]

# (model dtype, dtype of the array given): each pair the rule is checked on
DTYPE_PAIRS = [(dtypes.float32, dtypes.float64), (dtypes.float64, dtypes.float32)]
ROLES = ["input", "param", "state", "output_gradient"]
THREADS, CALLS = 8, 160


def _mlp() -> Model:
    model = Model()
    model |= Linear(dimension=6)
    model += Relu()
    model += Linear(dimension=3)
    return model


def _batch_norm() -> Model:
    model = Model()
    model |= Linear(dimension=4)
    model += BatchNorm1d(num_features=4)
    return model


class BackendReliability:
    """Subclass with `backend_name` set; override `backend_options` for extra constructor arguments."""

    backend_name: str = ""
    backend_options: dict[str, Any] = {}
    compile_options: dict[str, Any] = {}  # more ml.compile keywords, e.g. {"jit": False}

    # -- helpers ---------------------------------------------------------------------
    def make(self, dtype: dtypes.DType = dtypes.float32) -> Backend:
        cls: type[Backend] = registry.backend_class(self.backend_name)
        if dtype not in cls.supported_dtypes:
            pytest.skip(f"backend {self.backend_name!r} does not support {dtype.name}")
        return cls(dtype=dtype, **self.backend_options)

    def compile(self, model: Model, backend: Backend) -> CompiledModel:
        """`model` compiled for `backend` at input shape [4, 5], with `compile_options`."""
        return compiler.compile(model, backend, shapes={"input": [4, 5]}, **self.compile_options)

    def foreign(self, backend: Backend, value: Any, dtype: dtypes.DType) -> Any:
        """`value` as an array of `backend` with dtype `dtype` (not the backend's)."""
        return backend.array(backend.to_numpy(value), dtype=dtype)

    def write_in_place(self, backend: Backend, params: dict[str, Any], key: str, value: np.ndarray) -> None:
        """Overwrite the array `params[key]` itself with `value` (NumPy's `a[...] = value`)."""
        params[key][...] = value

    def thread_setup(self) -> Callable[[], None] | None:
        """What each worker thread runs first, made in the main thread (e.g. copy the framework's thread settings)."""
        return None

    def pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(THREADS, initializer=self.thread_setup())

    def numpy(self, backend: Backend, result: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.array(backend.to_numpy(v)) for k, v in result.items()}

    # -- the float dtype rule --------------------------------------------------------------
    @pytest.mark.parametrize("role", ROLES)
    @pytest.mark.parametrize(("model_dtype", "given"), DTYPE_PAIRS, ids=["f32-model-f64-given", "f64-model-f32-given"])
    def test_float_dtype_mismatch_is_refused(self, role: str, model_dtype: dtypes.DType, given: dtypes.DType) -> None:
        backend = self.make(model_dtype)
        self.make(given)  # the given dtype's arrays must exist on this backend too
        self.check_dtype_refused(backend, role, lambda value: self.foreign(backend, value, given), given.name)

    def check_dtype_refused(self, backend: Backend, role: str, convert: Callable[[Any], Any], given: str) -> None:
        """Evaluate with one array of `role` passed through `convert`: a DTypeMismatchError names key and dtypes."""
        stateful = role == "state"
        compiled = self.compile(_batch_norm() if stateful else _mlp(), backend)
        params = compiled.randomize_params(seed=0)
        inputs = {"input": backend.randn(4, 5)}
        grads = {"output": backend.ones(4, 4 if stateful else 3)}
        state = compiled.initial_state()
        if role == "input":
            key, inputs = "input", {"input": convert(inputs["input"])}
        elif role == "param":
            key = "linear_0.weight"
            params = {**params, key: convert(params[key])}
        elif role == "state":
            key = compiled.state_keys[0]
            state = {**state, key: convert(state[key])}
        else:
            key, grads = "output", {"output": convert(grads["output"])}
        pattern = rf"{re.escape(key)}'\]: expected dtype {backend.dtype.name}\b.*, got {given}\b"
        calls: list[Callable[[], Any]] = []
        if stateful:
            calls.append(lambda: compiled.apply(params, inputs, state))
            if backend.supports_gradients:
                calls.append(lambda: compiled.apply(params, inputs, state, grads))
        else:
            if role != "output_gradient":
                calls.append(lambda: compiled.evaluate(params, inputs))
            if backend.supports_gradients:
                calls.append(lambda: compiled.evaluate(params, inputs, grads))
        for call in calls:
            with pytest.raises(DTypeMismatchError, match=pattern):
                call()

    def test_gradients_keep_the_model_dtype(self) -> None:
        backend = self.make()
        compiled = self.compile(_mlp(), backend)
        params = compiled.randomize_params(seed=0)
        outputs, grads = compiled.evaluate(params, {"input": backend.randn(4, 5)}, {"output": backend.ones(4, 3)})
        assert {k: backend.dtype_of(v) for k, v in [*outputs.items(), *grads.items()]} == dict.fromkeys(
            [*outputs, *grads], backend.dtype
        )

    def test_output_gradient_of_another_type_names_the_expected_type(self) -> None:
        backend = self.make()
        compiled = self.compile(_mlp(), backend)
        params = compiled.randomize_params(seed=0)
        with pytest.raises(TypeError, match=r"output_gradients\['output'\]: expected an array of backend .*got list"):
            compiled.evaluate(params, {"input": backend.randn(4, 5)}, {"output": [[1.0] * 3] * 4})

    @pytest.mark.parametrize("index_dtype", [dtypes.int32, dtypes.int64])
    def test_integer_index_inputs_keep_their_dtype(self, index_dtype: dtypes.DType) -> None:
        backend = self.make()
        model = Model()
        model |= Embedding(num_embeddings=5, embedding_dim=3)
        compiled = compiler.compile(model, backend, shapes={"input": [2, 2]}, **self.compile_options)
        params = compiled.randomize_params(seed=0)
        rows = self.numpy(backend, params)["embedding_0.weight"]
        out = compiled.evaluate(params, {"input": backend.array(np.array([[0, 4], [2, 1]]), dtype=index_dtype)})
        np.testing.assert_array_equal(self.numpy(backend, out)["output"], rows[[[0, 4], [2, 1]]])

    def _classifier(self, backend: Backend) -> CompiledModel:
        """Linear(3) into CrossEntropyLoss, batch size left open: input [N, 5], target [N]."""
        model = Model()
        model |= Linear(dimension=3)(input="input", output="logits")
        model |= CrossEntropyLoss()(input="logits", target="target", output="loss")
        return compiler.compile(model, backend, shapes={"input": [None, 5]}, **self.compile_options)

    def test_a_batch_axis_shared_by_two_inputs_must_agree(self) -> None:
        backend = self.make()
        compiled = self._classifier(backend)
        params = compiled.randomize_params(seed=0)
        x, target = backend.randn(4, 5), backend.array(np.array([0, 1, 2]))
        with pytest.raises(ShapeError, match=r"inputs\['target'\]: expected shape \[d0\], got \[3\] \(d0 is 4, the "
                           r"size inputs\['input'\] gave it\)"):  # fmt: skip
            compiled.evaluate(params, {"input": x, "target": target})

    def test_float_values_for_class_indices_are_refused(self) -> None:
        backend = self.make()
        compiled = self._classifier(backend)
        params = compiled.randomize_params(seed=0)
        with pytest.raises(DTypeMismatchError, match=r"inputs\['target'\] holds indices .* must be integers"):
            compiled.evaluate(params, {"input": backend.randn(4, 5), "target": backend.randn(4)})

    # -- threads ---------------------------------------------------------------------------
    def test_concurrent_calls_match_single_threaded_results(self) -> None:
        backend = self.make()
        compiled = compiler.compile(quickstart_mlp(), backend, shapes={"input": [8, 20]}, **self.compile_options)
        params = compiled.randomize_params(seed=0)
        xs = [{"input": backend.randn(8, 20)} for _ in range(16)]
        gs = [{"output": backend.randn(8, 10)} for _ in range(16)]

        def call(i: int) -> dict[str, np.ndarray]:
            x, g = xs[i % 16], gs[i % 16]
            if i % 2 and backend.supports_gradients:
                outputs, grads = compiled.evaluate(params, x, g)
                return self.numpy(backend, {**outputs, **grads})
            return self.numpy(backend, compiled.evaluate(params, x))

        want = [call(i) for i in range(32)]
        with self.pool() as pool:
            got = list(pool.map(call, range(CALLS)))
        for i, result in enumerate(got):
            for key, value in result.items():
                np.testing.assert_array_equal(value, want[i % 32][key], err_msg=f"call {i}, {key}")

    def test_concurrent_stateful_calls_match_single_threaded_results(self) -> None:
        backend = self.make()
        compiled = self.compile(_batch_norm(), backend)
        params, state = compiled.randomize_params(seed=0), compiled.initial_state()
        xs = [{"input": backend.randn(4, 5)} for _ in range(8)]

        def call(i: int) -> dict[str, np.ndarray]:
            outputs, new_state = compiled.apply(params, xs[i % 8], state)
            return self.numpy(backend, {**outputs, **new_state})

        want = [call(i) for i in range(8)]
        with self.pool() as pool:
            got = list(pool.map(call, range(CALLS)))
        for i, result in enumerate(got):
            for key, value in result.items():
                np.testing.assert_array_equal(value, want[i % 8][key], err_msg=f"call {i}, {key}")

    def test_concurrent_random_calls_draw_what_sequential_calls_draw(self) -> None:
        backend = self.make()
        model = Model()
        model |= Linear(dimension=64)
        model += Dropout(p=0.5)
        try:
            compiled = compiler.compile(model, backend, shapes={"input": [4, 8]}, **self.compile_options)
        except UnsupportedError as exc:
            pytest.skip(f"declared unsupported by the backend: {exc}")
        params, x = compiled.randomize_params(seed=0), {"input": backend.ones(4, 8)}

        def call(_: int) -> bytes:
            return bytes(np.ascontiguousarray(backend.to_numpy(compiled.evaluate(params, x)["output"])).data)

        backend.set_seed(7)
        sequential = [call(i) for i in range(CALLS)]
        backend.set_seed(7)
        with self.pool() as pool:
            threaded = list(pool.map(call, range(CALLS)))
        assert len(set(sequential)) == CALLS, "sequential calls repeated a dropout mask"
        assert len(set(threaded)) == CALLS, "two concurrent calls drew the same dropout mask"
        assert sorted(threaded) == sorted(sequential), "threads drew other masks than sequential calls"

    # -- in-place writes ---------------------------------------------------------------------
    def test_in_place_parameter_writes_are_seen(self) -> None:
        backend = self.make()
        compiled = self.compile(_mlp(), backend)
        params = compiled.randomize_params(seed=0)
        x, g = {"input": backend.randn(4, 5)}, {"output": backend.ones(4, 3)}
        compiled.evaluate(params, x)
        if backend.supports_gradients:
            compiled.evaluate(params, x, g)
        for step, key in enumerate(params):
            value = np.asarray(backend.to_numpy(params[key])) * 2 + 0.25 * (step + 1)
            self.write_in_place(backend, params, key, value)
            fresh = self.compile(_mlp(), backend)
            copies = {k: backend.array(np.array(backend.to_numpy(v))) for k, v in params.items()}
            self._same(backend, compiled.evaluate(params, x), fresh.evaluate(copies, x), key)
            if backend.supports_gradients:
                got, want = compiled.evaluate(params, x, g), fresh.evaluate(copies, x, g)
                self._same(backend, {**got[0], **got[1]}, {**want[0], **want[1]}, key)

    def _same(self, backend: Backend, got: dict[str, Any], want: dict[str, Any], written: str) -> None:
        got_np, want_np = self.numpy(backend, got), self.numpy(backend, want)
        for key in want_np:
            np.testing.assert_array_equal(got_np[key], want_np[key], err_msg=f"{key} after writing {written}")


def compiled_mlp(backend: Backend) -> CompiledModel:
    """The small MLP the checks use, compiled for `backend` at batch 4 (for backend-specific tests)."""
    return compiler.compile(_mlp(), backend, shapes={"input": [4, 5]})
