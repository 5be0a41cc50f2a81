"""Backend conformance kit: every case checked against the float64 NumPy reference.

`check_case` compares a backend with the reference on one case: outputs, gradients as the
reference computes them (the core's gradient rules) and gradients by central finite
differences on the reference (at smooth points); random primitives are checked by their
declared statistic instead. Cases: `PRIMITIVE_CASES` (from the declarations), `CASES`
(catalogue layers), `INFERENCE_CASES` (layers compiled for inference), `KINK_CASES`
(ties and zeros) and `NONFINITE_CASES` (the primitive cases with NaN and ±inf planted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import compiler
from ..backend import Backend
from ..dtypes import DType, as_dtype, float32, float64
from ..graph import flatten
from ..primitives.examples import Sample
from .cases import CASES, INFERENCE_CASES, KINK_CASES, NONFINITE_CASES, PRIMITIVE_CASES, SYMBOLIC_SIZE, Case

__all__ = [
    "CASES",
    "INFERENCE_CASES",
    "KINK_CASES",
    "NONFINITE_CASES",
    "PRIMITIVE_CASES",
    "Case",
    "Expected",
    "TOLERANCES",
    "test_dtype",
    "test_hardware",
    "compile_case",
    "draw_inputs",
    "plant_nonfinite",
    "expected",
    "run_case",
    "check_case",
    "finite_difference",
]

# (relative, absolute) tolerances by dtype for comparisons against float64 NumPy.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-4, 1e-5),
    "float16": (2e-2, 2e-2),
    "bfloat16": (5e-2, 5e-2),
}
# Central differences in float64 are good to about these (relative, absolute) errors.
FD_TOLERANCE = (1e-5, 1e-7)
FD_STEP = 1e-6
# What `plant_nonfinite` plants, in this order.
NONFINITE = (np.nan, np.inf, -np.inf)

Arrays = dict[str, np.ndarray]


def test_dtype(default: DType = float32) -> DType:
    """The dtype backend tests run with: MITHRIL_TEST_DTYPE, else `default`."""
    name = os.environ.get("MITHRIL_TEST_DTYPE")
    return as_dtype(name) if name else default


def test_hardware() -> str:
    """The hardware backend tests target: MITHRIL_TEST_HARDWARE ("cpu" or "cuda"), default cpu."""
    return os.environ.get("MITHRIL_TEST_HARDWARE", "cpu")


test_dtype.__test__ = False  # type: ignore[attr-defined]
test_hardware.__test__ = False  # type: ignore[attr-defined]


def compile_case(case: Case, backend: Backend) -> compiler.CompiledModel:
    """Compile `case`; with `case.train_inputs` every float data input is trained, so gradients cover it."""
    trainable: list[str] = []
    if case.train_inputs:
        graph = flatten(case.build(), inference=bool(case.options.get("inference")))
        trainable = [e.name for e in graph.inputs if e.kind == "float" and not e.is_state]
    return compiler.compile(case.build(), backend, shapes=case.shapes, trainable_keys=trainable, **case.options)


def plant_nonfinite(value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `value` with NaN, +inf and -inf each at about one element in 12 (one at least, while
    elements last), at distinct random positions, so most windows and rows still see finite values."""
    flat = np.array(value, np.float64).reshape(-1)
    count = max(1, flat.size // 12)
    picks = rng.permutation(flat.size)
    for i, special in enumerate(NONFINITE):
        flat[picks[i * count : (i + 1) * count]] = special
    return flat.reshape(np.shape(value))


def draw_inputs(case: Case, compiled: compiler.CompiledModel, seed: int = 0) -> tuple[Arrays, Arrays, Arrays]:
    """Float64 NumPy params, inputs and state: sizes from `case.shapes` (None: SYMBOLIC_SIZE), else `compiled`.

    A case's `nonfinite` inputs get NaN and ±inf planted (`plant_nonfinite`).
    """
    rng = np.random.default_rng(seed)

    def draw(key: str) -> np.ndarray:
        shape = tuple(SYMBOLIC_SIZE if d is None else int(d) for d in case.shapes.get(key, compiled.shapes[key]))
        if key in case.int_inputs:
            return rng.integers(*case.int_range(key), shape)
        domain = case.domain.get(key, "any")
        if domain == "positive":
            value = rng.uniform(0.5, 2.0, shape)
        elif domain == "ties":
            value = rng.integers(-1, 2, shape).astype(np.float64)
        else:
            value = rng.standard_normal(shape)
        return plant_nonfinite(value, rng) if key in case.nonfinite else value

    return (
        {k: draw(k) for k in compiled.param_keys},
        {k: draw(k) for k in compiled.input_keys},
        {k: draw(k) for k in compiled.state_keys},
    )


def run_case(
    case: Case,
    backend: Backend,
    params: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    output_grads: Mapping[str, np.ndarray] | None,
    state: Mapping[str, np.ndarray] | None = None,
    compiled: compiler.CompiledModel | None = None,
) -> tuple[Arrays, Arrays | None]:
    """Evaluate `case` on `backend`, returning float64 NumPy outputs (new state as "state:<key>") and gradients.

    Stateful models run functionally from `state`. Outputs and gradients must come back in the backend's dtype.
    """
    compiled = compiled or compile_case(case, backend)
    p = {k: backend.array(v) for k, v in params.items()}
    x = {k: backend.array(v) for k, v in inputs.items()}
    g = None if output_grads is None else {k: backend.array(v) for k, v in output_grads.items()}
    as64 = lambda d: {k: np.asarray(backend.to_numpy(v), np.float64) for k, v in d.items()}  # noqa: E731
    new_state: Mapping[str, Any] = {}
    if compiled.state_keys:
        s = {k: backend.array(v) for k, v in (state or {}).items()}
        result = compiled.apply(p, x, s, g)
        out, grads, new_state = (result[0], None, result[1]) if g is None else result
    elif g is None:
        out, grads = compiled.evaluate(p, x), None
    else:
        out, grads = compiled.evaluate(p, x, g)
    ints = {e.name for e in compiled.graph.outputs if e.kind == "int"}  # arange: int64 as torch's (JAX: its int)
    for what, values in (("output", out), ("gradient of", grads or {}), ("new state", new_state)):
        for key, value in values.items():
            dtype = backend.dtype_of(value)
            if what == "output" and key in ints:
                came_back = f"{case.name}: int output {key!r} came back as {dtype}"
                assert dtype is not None and dtype.name.startswith("int"), came_back
                continue
            assert dtype is backend.dtype, f"{case.name}: {what} {key!r} came back as {dtype}, not {backend.dtype.name}"
    out = {**out, **{f"state:{k}": v for k, v in new_state.items()}}
    return as64(out), None if grads is None else as64(grads)


@dataclass
class Expected:
    """What a case must give, from the float64 reference: drawn arguments, outputs, seeds and gradients.

    `grads` are the reference's gradients (the core's rules), `numeric` central finite
    differences (None where the case is not smooth); both None without gradients to check.
    """

    compiled: compiler.CompiledModel
    params: Arrays
    inputs: Arrays
    state: Arrays
    outputs: Arrays
    seeds: Arrays
    grads: Arrays | None
    numeric: Arrays | None


_EXPECTED: dict[tuple[int, str, str], Expected] = {}


def expected(case: Case, reference: Backend) -> Expected:
    """The reference's results for `case`, computed once per session."""
    key = (id(case), reference.name, reference.dtype.name)
    if key not in _EXPECTED:
        compiled = compile_case(case, reference)
        params, inputs, state = draw_inputs(case, compiled)
        outputs, _ = run_case(case, reference, params, inputs, None, state, compiled)
        rng = np.random.default_rng(1)
        seeds = {k: rng.standard_normal(v.shape) for k, v in outputs.items() if not k.startswith("state:")}
        grads = numeric = None
        if case.grads and params and case.statistic is None:
            _, grads = run_case(case, reference, params, inputs, seeds, state, compiled)
            if case.smooth:
                numeric = numeric_gradients(case, reference, compiled, params, inputs, state, seeds)
        _EXPECTED[key] = Expected(compiled, params, inputs, state, outputs, seeds, grads, numeric)
    return _EXPECTED[key]


def numeric_gradients(
    case: Case,
    backend: Backend,
    compiled: compiler.CompiledModel,
    params: Arrays,
    inputs: Arrays,
    state: Arrays,
    seeds: Arrays,
    eps: float = FD_STEP,
) -> Arrays:
    """Central differences of sum(output * seed) over every parameter element (`backend` must be float64)."""
    assert backend.dtype is float64, "finite differences need float64"

    def loss(p: Mapping[str, np.ndarray]) -> float:
        out, _ = run_case(case, backend, p, inputs, None, state, compiled)
        return float(sum(np.sum(out[k] * seed) for k, seed in seeds.items()))

    numeric = {}
    for key, value in params.items():
        grad = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            bumped = dict(params)
            for sign in (1, -1):
                arr = value.copy()
                arr[idx] += sign * eps
                bumped[key] = arr
                grad[idx] += sign * loss(bumped) / (2 * eps)
        numeric[key] = grad
    return numeric


def _assert_close(case: Case, got: Arrays, want: Arrays, what: str, rtol: float, atol: float) -> None:
    assert list(got) == list(want), f"{case.name}: {what} keys {list(got)}, reference {list(want)}"
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=f"{case.name}: {what} {key!r}")


def check_case(case: Case, backend: Backend, reference: Backend, *, grads: bool = True) -> None:
    """Assert `backend` matches `reference` (a float64 NumPy backend) on `case`.

    Forward alone, then (where `grads` and the case take gradients) forward and backward
    together: the same outputs, and gradients equal to the reference's (the core's rules)
    and, at smooth points, to central finite differences, within the dtype's tolerances.
    """
    want = expected(case, reference)
    rtol, atol = TOLERANCES[backend.dtype.name]
    compiled = compile_case(case, backend)
    run = lambda seeds: run_case(case, backend, want.params, want.inputs, seeds, want.state, compiled)  # noqa: E731
    out, _ = run(None)
    if case.statistic is not None:
        _check_statistic(case, want, out, {}, {}, rtol, atol)
        if grads and case.grads and want.params:
            out, got_grads = run(want.seeds)
            _check_statistic(case, want, out, want.seeds, got_grads or {}, rtol, atol)
        return
    _assert_close(case, out, want.outputs, "output", rtol, atol)
    if not grads or want.grads is None:
        return
    out, got_grads = run(want.seeds)
    assert got_grads is not None
    _assert_close(case, out, want.outputs, "output with gradients", rtol, atol)
    _assert_close(case, got_grads, want.grads, "gradient of", rtol, atol)
    if want.numeric is not None:
        fd_rtol, fd_atol = max(rtol, FD_TOLERANCE[0]), max(atol, FD_TOLERANCE[1])
        _assert_close(case, got_grads, want.numeric, "finite-difference gradient of", fd_rtol, fd_atol)


def _check_statistic(
    case: Case, want: Expected, out: Arrays, seeds: Arrays, grads: Arrays, rtol: float, atol: float
) -> None:
    """A random case: the reference's output keys and shapes, then the case's declared statistic."""
    assert case.statistic is not None
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {k: v.shape for k, v in want.outputs.items()}, f"{case.name}: output shapes {shapes}"
    sample = Sample(case.attrs, {**want.params, **want.inputs}, out, seeds, grads, rtol, atol)
    case.statistic(sample)


def finite_difference(case: Case, backend: Backend, eps: float = FD_STEP) -> None:
    """Assert `backend`'s gradients of `case` match its own central differences (backend must be float64)."""
    compiled = compile_case(case, backend)
    params, inputs, state = draw_inputs(case, compiled)
    out, _ = run_case(case, backend, params, inputs, None, state, compiled)
    rng = np.random.default_rng(2)
    seeds = {k: rng.standard_normal(v.shape) for k, v in out.items() if not k.startswith("state:")}
    _, grads = run_case(case, backend, params, inputs, seeds, state, compiled)
    assert grads is not None
    numeric = numeric_gradients(case, backend, compiled, params, inputs, state, seeds, eps)
    _assert_close(case, grads, numeric, "finite-difference gradient of", *FD_TOLERANCE)
