"""Backend conformance kit: every primitive case checked against the NumPy reference.

Backends (ours and third parties') call `check_case` for each entry of `CASES` and
`KINK_CASES`; the NumPy backend itself is checked against finite differences with
`finite_difference` (on `CASES`: at kinks the gradient is a convention, not a limit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import compiler
from ..backend import Backend
from ..dtypes import DType, as_dtype, float32, float64
from .cases import CASES, KINK_CASES, SYMBOLIC_SIZE, Case

__all__ = [
    "CASES",
    "KINK_CASES",
    "Case",
    "TOLERANCES",
    "test_dtype",
    "test_hardware",
    "draw_inputs",
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


def test_dtype(default: DType = float32) -> DType:
    """The dtype backend tests run with: MITHRIL_TEST_DTYPE, else `default`."""
    name = os.environ.get("MITHRIL_TEST_DTYPE")
    return as_dtype(name) if name else default


def test_hardware() -> str:
    """The hardware backend tests target: MITHRIL_TEST_HARDWARE ("cpu" or "cuda"), default cpu."""
    return os.environ.get("MITHRIL_TEST_HARDWARE", "cpu")


test_dtype.__test__ = False  # type: ignore[attr-defined]
test_hardware.__test__ = False  # type: ignore[attr-defined]


def draw_inputs(case: Case, compiled: compiler.CompiledModel, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Float64 NumPy params and inputs for `case`: sizes from `case.shapes` (None: SYMBOLIC_SIZE), else `compiled`."""
    rng = np.random.default_rng(seed)

    def draw(key: str) -> np.ndarray:
        shape = tuple(SYMBOLIC_SIZE if d is None else int(d) for d in case.shapes.get(key, compiled.shapes[key]))
        if key in case.int_inputs:
            return rng.integers(0, case.int_inputs[key], shape)
        if case.domain.get(key) == "positive":
            return rng.uniform(0.5, 2.0, shape)
        if case.domain.get(key) == "ties":
            return rng.integers(-1, 2, shape).astype(np.float64)
        return rng.standard_normal(shape)

    return {k: draw(k) for k in compiled.param_keys}, {k: draw(k) for k in compiled.input_keys}


def run_case(
    case: Case,
    backend: Backend,
    params: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    output_grads: Mapping[str, np.ndarray] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Compile and evaluate `case` on `backend`, returning float64 NumPy results.

    Outputs and gradients must come back in the backend's dtype.
    """
    compiled = _compile(case, backend)
    p = {k: backend.array(v) for k, v in params.items()}
    x = {k: backend.array(v) for k, v in inputs.items()}
    as64 = lambda d: {k: np.asarray(backend.to_numpy(v), np.float64) for k, v in d.items()}  # noqa: E731
    if output_grads is None:
        out, grads = compiled.evaluate(p, x), None
    else:
        out, grads = compiled.evaluate(p, x, {k: backend.array(v) for k, v in output_grads.items()})
    for what, values in (("output", out), ("gradient of", grads or {})):
        for key, value in values.items():
            dtype = backend.dtype_of(value)
            assert dtype is backend.dtype, f"{case.name}: {what} {key!r} came back as {dtype}, not {backend.dtype.name}"
    if compiled.state is not None:
        out = {**out, **{f"state:{k}": v for k, v in compiled.state.items()}}
    return as64(out), None if grads is None else as64(grads)


def check_case(case: Case, backend: Backend, reference: Backend, *, grads: bool = True) -> None:
    """Assert `backend` matches `reference` (a float64 NumPy backend) on `case`.

    Forward alone, then (where both sides take gradients) forward and backward together:
    the same outputs, gradients keyed like the reference's, all within the dtype's tolerances.
    """
    params, inputs = draw_inputs(case, _compile(case, reference))
    rtol, atol = TOLERANCES[backend.dtype.name]

    def assert_close(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], what: str) -> None:
        assert list(got) == list(want), f"{case.name}: {what} keys {list(got)}, reference {list(want)}"
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=f"{case.name}: {what} {key!r}")

    ref_out, _ = run_case(case, reference, params, inputs, None)
    assert_close(run_case(case, backend, params, inputs, None)[0], ref_out, "output")
    if not (grads and case.grads and backend.supports_gradients):
        return
    out_grads = {
        k: np.random.default_rng(1).standard_normal(v.shape) for k, v in ref_out.items() if not k.startswith("state:")
    }
    ref_out, ref_grads = run_case(case, reference, params, inputs, out_grads)
    got_out, got_grads = run_case(case, backend, params, inputs, out_grads)
    assert got_grads is not None and ref_grads is not None
    assert_close(got_out, ref_out, "output with gradients")
    assert_close(got_grads, ref_grads, "gradient of")


def finite_difference(case: Case, backend: Backend, eps: float = 1e-6) -> None:
    """Assert `backend`'s gradients of `case` match central differences (backend must be float64)."""
    assert backend.dtype is float64, "finite differences need float64"
    compiled = _compile(case, backend)
    params, inputs = draw_inputs(case, compiled)
    out = compiled.evaluate(params, inputs)
    seeds = {k: np.random.default_rng(2).standard_normal(np.shape(v)) for k, v in out.items()}
    _, grads = compiled.evaluate(params, inputs, seeds)
    if compiled.state_keys:
        compiled.state = None  # each loss evaluation below starts from the same state

    def loss(p: Mapping[str, np.ndarray]) -> float:
        if compiled.state_keys:
            compiled.state = None
        res = compiled.evaluate(dict(p), inputs)
        return float(sum(np.sum(res[k] * seeds[k]) for k in res))

    for key, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            bumped = dict(params)
            for sign in (1, -1):
                arr = value.copy()
                arr[idx] += sign * eps
                bumped[key] = arr
                numeric[idx] += sign * loss(bumped) / (2 * eps)
        np.testing.assert_allclose(grads[key], numeric, rtol=1e-5, atol=1e-7, err_msg=f"{case.name}: {key}")


def _compile(case: Case, backend: Backend) -> compiler.CompiledModel:
    """Compile `case` with every float input trainable, so gradients cover all of them."""
    probe = compiler.compile(case.build(), backend, shapes=case.shapes, **case.options)
    trainable = [e.name for e in probe.graph.inputs if e.kind == "float" and not e.is_state]
    return compiler.compile(case.build(), backend, shapes=case.shapes, trainable_keys=trainable, **case.options)
