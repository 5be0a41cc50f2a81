"""NumPy (the reference), JAX and, when installed, torch agree on outputs and gradients in float64.

The layer primitives (convolution, pooling, normalisation, losses, ...) are checked through the
core's conformance kit in test_layers.py; the coverage tests here count both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from jax_test_helpers import torch_available

import mithril as ml
from mithril.models import (
    Abs,
    Add,
    Divide,
    Exp,
    Flatten,
    Linear,
    Log,
    MatMul,
    Max,
    Maximum,
    Mean,
    Minimum,
    Model,
    Multiply,
    Negate,
    Power,
    Relu,
    Reshape,
    Sigmoid,
    Sqrt,
    Square,
    Subtract,
    Sum,
    Tanh,
    Transpose,
)
from mithril.testing import CASES as KIT_CASES
from mithril.testing.models import quickstart_mlp
from mithril_jax.ops import OPS as JAX_OPS
from mithril_numpy.ops import OPS as NUMPY_OPS

RTOL = 1e-10
Case = tuple[Model, dict[str, list[int]]]


def unary(op: Callable[[], Any], positive: bool = False, shape: tuple[int, ...] = (4, 5)) -> Case:
    """Linear -> (Exp ->) op, so the op's gradient reaches the Linear's parameters."""
    model = Model()
    model |= Linear(3)(input="input", output="h")
    if positive:
        model += Exp()(input="h", output="p")
    model += op()(output="output")
    return model, {"input": list(shape)}


def binary(
    op: Callable[[], Any],
    positive_left: bool = False,
    left: tuple[int, ...] = (4, 5),
    right: tuple[int, ...] = (5,),
    right_dim: int = 3,
) -> Case:
    """op(Linear(x), Linear(y)): right broadcasts against left by default."""
    model = Model()
    model |= Linear(3)(input="x", output="a")
    model |= Linear(right_dim)(input="y", output="b")
    lhs = "a"
    if positive_left:
        model |= Exp()(input="a", output="ea")
        lhs = "ea"
    model |= op()(left=lhs, right="b", output="output")
    return model, {"x": list(left), "y": list(right)}


CASES: dict[str, Case] = {
    "linear": unary(Relu),
    "relu": unary(Relu),
    "sigmoid": unary(Sigmoid),
    "tanh": unary(Tanh),
    "exp": unary(Exp),
    "log": unary(Log, positive=True),
    "sqrt": unary(Sqrt, positive=True),
    "abs": unary(Abs),
    "neg": unary(Negate),
    "square": unary(Square),
    "add": binary(Add),
    "sub": binary(Subtract),
    "mul": binary(Multiply),
    "div": binary(Divide, positive_left=True),
    "pow": binary(Power, positive_left=True),
    "maximum": binary(Maximum),
    "minimum": binary(Minimum),
    "matmul": binary(MatMul, left=(2, 4, 5), right=(3, 5), right_dim=6),
    "matmul-vector-left": binary(MatMul, left=(5,), right=(3, 5), right_dim=6),
    "matmul-vector-right": binary(MatMul, left=(2, 4, 5), right=(5,)),
    "sum": unary(lambda: Sum(axis=1), shape=(2, 4, 5)),
    "sum-all": unary(Sum, shape=(2, 4, 5)),
    "mean": unary(lambda: Mean(axis=(0, 2), keepdim=True), shape=(2, 4, 5)),
    "max": unary(lambda: Max(axis=-1), shape=(2, 4, 5)),
    "max-all-keepdim": unary(lambda: Max(keepdim=True), shape=(2, 4, 5)),
    "transpose": unary(Transpose, shape=(2, 4, 5)),
    "transpose-axes": unary(lambda: Transpose(axes=(1, 0, 2)), shape=(2, 4, 5)),
    "reshape": unary(lambda: Reshape((4, -1)), shape=(2, 4, 5)),
    "flatten": unary(Flatten, shape=(2, 4, 5)),
    "flatten-all": unary(lambda: Flatten(start_dim=0), shape=(2, 4, 5)),
}


def _primitives(model: Model, shapes: dict[str, list[int]], inference: bool = True) -> set[str]:
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes=shapes, inference=inference)
    return {node.primitive for node in compiled.graph.nodes}


def test_every_jax_op_has_a_parity_case() -> None:
    covered = set().union(*(_primitives(m, s) for m, s in CASES.values()))
    for case in KIT_CASES:
        covered |= _primitives(case.build(), case.shapes, inference=False) | _primitives(case.build(), case.shapes)
    assert set(JAX_OPS) <= covered, sorted(set(JAX_OPS) - covered)


def test_every_numpy_primitive_has_a_jax_op() -> None:
    assert not set(NUMPY_OPS) - set(JAX_OPS), sorted(set(NUMPY_OPS) - set(JAX_OPS))


def run_both(
    model: Model,
    shapes: dict[str, list[int]],
    params_np: dict[str, np.ndarray] | None = None,
    inputs_np: dict[str, np.ndarray] | None = None,
) -> tuple[Any, Any]:
    """Evaluate forward and backward on NumPy and JAX (float64) with the same numbers."""
    nb, jb = ml.NumpyBackend(dtype=ml.float64), ml.JaxBackend(dtype=ml.float64)
    cn = ml.compile(model, nb, shapes=shapes)
    cj = ml.compile(model, jb, shapes=shapes)
    rng = np.random.default_rng(0)
    params_np = params_np or cn.randomize_params(seed=1)
    inputs_np = inputs_np or {k: rng.standard_normal(cn.shapes[k]) for k in cn.input_keys}
    out_np = cn.evaluate(params_np, inputs_np)
    grads_in = {k: rng.standard_normal(np.shape(v)) for k, v in out_np.items()}
    _, g_np = cn.evaluate(params_np, inputs_np, grads_in)
    to_jax = lambda d: {k: jb.array(v) for k, v in d.items()}  # noqa: E731
    out_j = cj.evaluate(to_jax(params_np), to_jax(inputs_np))
    _, g_j = cj.evaluate(to_jax(params_np), to_jax(inputs_np), to_jax(grads_in))
    return (out_np, g_np), (out_j, g_j)


def assert_same(ref: Any, got: Any) -> None:
    (out_r, g_r), (out_g, g_g) = ref, got
    assert list(out_r) == list(out_g) and list(g_r) == list(g_g)
    for k in out_r:
        assert np.asarray(out_g[k]).dtype == np.float64
        np.testing.assert_allclose(np.asarray(out_g[k]), out_r[k], rtol=RTOL, atol=1e-12, err_msg=k)
    for k in g_r:
        np.testing.assert_allclose(np.asarray(g_g[k]), g_r[k], rtol=RTOL, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_primitive_matches_numpy(case: str) -> None:
    model, shapes = CASES[case]
    assert_same(*run_both(model, shapes))


def _zero_linear_params(model: Model, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes=shapes)
    return {k: np.zeros(compiled.shapes[k]) for k in compiled.param_keys}


@pytest.mark.parametrize("op", [Relu, Abs])
def test_gradient_at_zero_is_zero(op: Callable[[], Any]) -> None:
    model, shapes = unary(op)
    ref, got = run_both(model, shapes, params_np=_zero_linear_params(model, shapes))
    assert_same(ref, got)
    assert all(not np.asarray(g).any() for g in got[1].values())


@pytest.mark.parametrize("op", [Maximum, Minimum])
def test_ties_split_the_gradient(op: Callable[[], Any]) -> None:
    model, shapes = binary(op, left=(4, 5), right=(4, 5))
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes=shapes)
    params = compiled.randomize_params(seed=3)
    params["linear_1.weight"], params["linear_1.bias"] = params["linear_0.weight"], params["linear_0.bias"]
    x = np.random.default_rng(4).standard_normal((4, 5))
    ref, got = run_both(model, shapes, params_np=params, inputs_np={"x": x, "y": x})
    assert_same(ref, got)
    np.testing.assert_allclose(np.asarray(got[1]["linear_0.bias"]), np.asarray(got[1]["linear_1.bias"]))


def test_max_reduction_shares_the_gradient_among_ties() -> None:
    model, shapes = unary(lambda: Max(axis=1), shape=(4, 5))
    params = _zero_linear_params(model, shapes)
    params["linear_0.bias"] = np.array([1.0, 1.0, 0.5])
    ref, got = run_both(model, shapes, params_np=params)
    assert_same(ref, got)
    np.testing.assert_allclose(np.asarray(got[1]["linear_0.bias"])[2], 0.0)


def test_quickstart_mlp_agrees_across_backends_float64() -> None:
    backends: list[ml.Backend] = [ml.NumpyBackend(dtype=ml.float64), ml.JaxBackend(dtype=ml.float64)]
    if torch_available():
        backends.append(ml.TorchBackend(dtype=ml.float64))
    else:
        warnings.warn("mithril-torch is not installed: parity checked on NumPy and JAX only", stacklevel=1)
    model = quickstart_mlp()
    rng = np.random.default_rng(7)
    ref_model = ml.compile(model, backends[0], shapes={"input": [32, 20]})
    params = {k: np.asarray(v) for k, v in ref_model.randomize_params(seed=5).items()}
    x, g = rng.standard_normal((32, 20)), rng.standard_normal((32, 10))
    results = []
    for backend in backends:
        compiled = ml.compile(model, backend, shapes={"input": [32, 20]})
        p = {k: backend.array(v) for k, v in params.items()}
        out, grads = compiled.evaluate(p, {"input": backend.array(x)}, {"output": backend.array(g)})
        results.append(
            ({k: backend.to_numpy(v) for k, v in out.items()}, {k: backend.to_numpy(v) for k, v in grads.items()})
        )
    for other in results[1:]:
        assert_same(results[0], other)
