"""What the tracer records, and the capabilities it declares."""

from __future__ import annotations

import numpy as np
import pytest
from mithril_tracer import OpRecord, TracerBackend

import mithril as ml
from mithril.models import BatchNorm2d, Conv2d, Linear, Model, Relu


def _mlp() -> Model:
    model = Model()
    model |= Linear(dimension=4)
    model += Relu()
    model += Linear(dimension=2)
    return model


def test_forward_call_records_each_primitive_with_shapes() -> None:
    backend = ml.TracerBackend(dtype=ml.float64)
    assert isinstance(backend, TracerBackend)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]})
    params = compiled.randomize_params(seed=0)
    compiled.evaluate(params, {"input": backend.randn(3, 5)})
    assert backend.trace is not None and backend.trace.kind == "forward"
    assert backend.trace.ops == [
        OpRecord("linear", "linear_0", "forward", ((3, 5), (4, 5), (4,)), ((3, 4),)),
        OpRecord("relu", "relu_0", "forward", ((3, 4),), ((3, 4),)),
        OpRecord("linear", "linear_1", "forward", ((3, 4), (2, 4), (2,)), ((3, 2),)),
    ]


def test_gradient_call_records_the_backward_rules_too() -> None:
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]})
    params = compiled.randomize_params(seed=0)
    _, grads = compiled.evaluate(params, {"input": backend.randn(3, 5)}, {"output": backend.ones(3, 2)})
    trace = backend.trace
    assert trace is not None and trace.kind == "forward_backward"
    assert trace.primitives == ["linear", "relu", "linear"]
    backward = [(op.path, op.output_shapes) for op in trace.ops if op.phase == "backward"]
    assert ("linear_0", ((4, 5),)) in backward and ("relu_0", ((3, 4),)) in backward
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in params.items()}
    assert "linear_1" in str(trace)


def test_each_call_gets_its_own_trace_and_history_is_bounded() -> None:
    backend = ml.TracerBackend(history=2)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]}, inference=True)
    params = compiled.randomize_params(seed=0)
    for _ in range(3):
        compiled.evaluate(params, {"input": backend.randn(3, 5)})
    assert len(backend.history) == 2 and backend.history[-1] is backend.trace
    assert all(len(trace.ops) == 3 for trace in backend.history)


def test_multi_output_primitives_record_every_output() -> None:
    model = Model()
    model |= BatchNorm2d(num_features=3)
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = ml.compile(model, backend, shapes={"input": [2, 3, 4, 4]})
    compiled.evaluate(compiled.randomize_params(seed=0), {"input": backend.randn(2, 3, 4, 4)})
    assert backend.trace is not None
    (record,) = backend.trace.ops
    assert record.output_shapes == ((2, 3, 4, 4), (3,), (3,))
    assert compiled.state is not None and set(compiled.state) == set(compiled.state_keys)


def test_results_equal_the_numpy_backend() -> None:
    tracer, reference = ml.TracerBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    traced = ml.compile(_mlp(), tracer, shapes={"input": [3, 5]})
    plain = ml.compile(_mlp(), reference, shapes={"input": [3, 5]})
    params = plain.randomize_params(seed=0)
    x = {"input": reference.randn(3, 5)}
    np.testing.assert_array_equal(traced.evaluate(params, x)["output"], plain.evaluate(params, x)["output"])


def test_left_out_primitives_fail_at_compile_time_naming_them() -> None:
    model = Model()
    model |= Conv2d(in_channels=1, out_channels=2, kernel_size=3)
    with pytest.raises(ml.UnsupportedError, match="'conv2d'"):
        ml.compile(model, ml.TracerBackend(), shapes={"input": [1, 1, 5, 5]})


def test_declared_capabilities_are_enforced() -> None:
    with pytest.raises(TypeError, match="float16"):
        ml.TracerBackend(dtype=ml.float16)
    with pytest.raises(ValueError, match="cpu"):
        ml.TracerBackend(device="cuda")
    with pytest.raises(ml.UnsupportedError, match="JIT"):
        ml.compile(_mlp(), ml.TracerBackend(), jit=True)
    with pytest.raises(TypeError, match="unknown option"):
        ml.compile(_mlp(), ml.TracerBackend(), fast=True)
