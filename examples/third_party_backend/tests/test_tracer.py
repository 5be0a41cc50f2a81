"""What the tracer records, that it lowers only the core set, and the capabilities it declares."""

from __future__ import annotations

import numpy as np
import pytest
from mithril_tracer import OpRecord, TracerBackend

import mithril as ml
from mithril.models import BatchNorm2d, Linear, Model, Relu
from mithril.primitives import CORE_SET
from mithril.testing import CASES, INFERENCE_CASES, KINK_CASES, PRIMITIVE_CASES, Case, compile_case, draw_inputs

# Every layer case, and every case of a primitive outside the core set (a composite).
COMPOSITE_CASES = [*CASES, *INFERENCE_CASES, *KINK_CASES, *[c for c in PRIMITIVE_CASES if c.primitive not in CORE_SET]]


def _mlp() -> Model:
    model = Model()
    model |= Linear(dimension=4)
    model += Relu()
    model += Linear(dimension=2)
    return model


def test_the_op_table_is_exactly_the_core_set() -> None:
    assert set(TracerBackend.ops) == CORE_SET
    assert set(TracerBackend().op_table()) == CORE_SET


def test_forward_call_records_each_core_primitive_with_shapes() -> None:
    backend = ml.TracerBackend(dtype=ml.float64)
    assert isinstance(backend, TracerBackend)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]})
    params = compiled.randomize_params(seed=0)
    compiled.evaluate(params, {"input": backend.randn(3, 5)})
    assert backend.trace is not None and backend.trace.kind == "forward"
    assert backend.trace.ops[:4] == [
        OpRecord("transpose", "linear_0.transpose_0", "forward", ((4, 5),), ((5, 4),)),
        OpRecord("matmul", "linear_0.matmul_1", "forward", ((3, 5), (5, 4)), ((3, 4),)),
        OpRecord("add", "linear_0.add_2", "forward", ((3, 4), (4,)), ((3, 4),)),
        OpRecord("relu", "relu_0", "forward", ((3, 4),), ((3, 4),)),
    ]
    assert backend.trace.primitives == ["transpose", "matmul", "add", "relu", "transpose", "matmul", "add"]


def test_gradient_call_records_the_backward_pass_after_the_forward_one() -> None:
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]})
    params = compiled.randomize_params(seed=0)
    _, grads = compiled.evaluate(params, {"input": backend.randn(3, 5)}, {"output": backend.ones(3, 2)})
    trace = backend.trace
    assert trace is not None and trace.kind == "forward_backward"
    phases = [op.phase for op in trace.ops]
    assert phases == sorted(phases, key=["forward", "backward"].index) and phases[-1] == "backward"
    assert trace.primitives == ["transpose", "matmul", "add", "relu", "transpose", "matmul", "add"]
    backward = [(op.primitive, op.output_shapes) for op in trace.ops if op.path.startswith("grad.linear_0.")]
    assert ("transpose", ((4, 5),)) in backward  # linear_0.weight's gradient, back in its [out, in] layout
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in params.items()}
    assert "grad.relu_0" in str(trace)


@pytest.mark.parametrize("case", COMPOSITE_CASES, ids=lambda c: c.name)
def test_no_composite_is_ever_executed(case: Case) -> None:
    """Layers and composites run forward and backward as core primitives only."""
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = compile_case(case, backend)
    params, inputs, state = draw_inputs(case, compiled)

    def run(seeds: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The outputs of one call (stateful models run from the drawn state); its trace stays on the backend."""
        if compiled.state_keys:
            return compiled.apply(params, inputs, state, seeds)[0]
        result = compiled.evaluate(params, inputs, seeds)
        return result if seeds is None else result[0]

    outputs = run(None)
    traces = [backend.trace]
    if case.grads and params:
        run({k: np.ones_like(v) for k, v in outputs.items()})
        traces.append(backend.trace)
    for trace in traces:
        assert trace is not None and trace.ops
        executed = {op.primitive for op in trace.ops}
        assert executed <= CORE_SET, sorted(executed - CORE_SET)
        assert ("backward" in {op.phase for op in trace.ops}) == (trace.kind == "forward_backward")


def test_each_call_gets_its_own_trace_and_history_is_bounded() -> None:
    backend = ml.TracerBackend(history=2)
    compiled = ml.compile(_mlp(), backend, shapes={"input": [3, 5]}, inference=True)
    params = compiled.randomize_params(seed=0)
    for _ in range(3):
        compiled.evaluate(params, {"input": backend.randn(3, 5)})
    assert len(backend.history) == 2 and backend.history[-1] is backend.trace
    assert all(len(trace.ops) == 7 for trace in backend.history)


def test_batch_norm_updates_its_state_through_core_primitives() -> None:
    model = Model()
    model |= BatchNorm2d(num_features=3)
    backend = ml.TracerBackend(dtype=ml.float64)
    compiled = ml.compile(model, backend, shapes={"input": [2, 3, 4, 4]})
    x = backend.randn(2, 3, 4, 4)
    compiled.evaluate(compiled.randomize_params(seed=0), {"input": x})
    assert backend.trace is not None
    assert {op.primitive for op in backend.trace.ops} <= CORE_SET
    assert compiled.state is not None and set(compiled.state) == set(compiled.state_keys)
    np.testing.assert_allclose(compiled.state["batchnorm2d_0.running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))


def test_results_equal_the_numpy_backend() -> None:
    tracer, reference = ml.TracerBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    traced = ml.compile(_mlp(), tracer, shapes={"input": [3, 5]})
    plain = ml.compile(_mlp(), reference, shapes={"input": [3, 5]})
    params = plain.randomize_params(seed=0)
    x, g = {"input": reference.randn(3, 5)}, {"output": reference.randn(3, 2)}
    (out, grads), (want, want_grads) = traced.evaluate(params, x, g), plain.evaluate(params, x, g)
    np.testing.assert_allclose(out["output"], want["output"], rtol=1e-12)
    for key, value in want_grads.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-12)


def test_declared_capabilities_are_enforced() -> None:
    with pytest.raises(TypeError, match="float16"):
        ml.TracerBackend(dtype=ml.float16)
    with pytest.raises(ValueError, match="cpu"):
        ml.TracerBackend(device="cuda")
    with pytest.raises(ml.UnsupportedError, match="JIT"):
        ml.compile(_mlp(), ml.TracerBackend(), jit=True)
    with pytest.raises(TypeError, match="unknown option"):
        ml.compile(_mlp(), ml.TracerBackend(), fast=True)
