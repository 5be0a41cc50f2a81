"""Every primitive, forward and backward, agrees with the NumPy reference backend in float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from torch_devices import DEVICES

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
from mithril.models.base import BaseModel
from mithril_numpy.ops import OPS as NUMPY_OPS
from mithril_torch.ops import OPS as TORCH_OPS

Shapes = dict[str, list[int]]


def unary(op: BaseModel, positive: bool = False) -> tuple[Model, Shapes]:
    """input [3, 5] -> Linear(4) (-> Exp when the op needs positive values) -> op."""
    model = Model()
    model |= Linear(4)(input="input", output="a")
    if positive:
        model |= Exp()(input="a", output="pos")
    model |= op(input="pos" if positive else "a", output="output")
    return model, {"input": [3, 5]}


def binary(op: BaseModel, right_dim: int = 1, positive_left: bool = False) -> tuple[Model, Shapes]:
    """Two Linear branches of input [2, 3, 5], [.., 4] and [.., right_dim] (broadcasting), then op."""
    model = Model()
    model |= Linear(4)(input="input", output="a")
    model |= Linear(right_dim)(input="input", output="b")
    left = "a"
    if positive_left:
        model |= Exp()(input="a", output="ea")
        left = "ea"
    model |= op(left=left, right="b", output="output")
    return model, {"input": [2, 3, 5]}


def matmul() -> tuple[Model, Shapes]:
    """[3, 4] @ [4, 2], both sides computed from params."""
    model = Model()
    model |= Linear(4)(input="input", output="a")
    model |= Linear(2)(input="x2", output="b")
    model |= MatMul()(left="a", right="b", output="output")
    return model, {"input": [3, 5], "x2": [4, 5]}


def shaped(op: BaseModel) -> tuple[Model, Shapes]:
    """input [2, 3, 5] -> Linear(4) -> op (reductions and shape ops on a rank-3 value)."""
    model = Model()
    model |= Linear(4)(input="input", output="a")
    model |= op(input="a", output="output")
    return model, {"input": [2, 3, 5]}


CASES: dict[str, Callable[[], tuple[Model, Shapes]]] = {
    "linear": lambda: shaped(Linear(3)),
    "relu": lambda: unary(Relu()),
    "sigmoid": lambda: unary(Sigmoid()),
    "tanh": lambda: unary(Tanh()),
    "exp": lambda: unary(Exp()),
    "log": lambda: unary(Log(), positive=True),
    "sqrt": lambda: unary(Sqrt(), positive=True),
    "abs": lambda: unary(Abs()),
    "neg": lambda: unary(Negate()),
    "square": lambda: unary(Square()),
    "add": lambda: binary(Add()),
    "sub": lambda: binary(Subtract()),
    "mul": lambda: binary(Multiply()),
    "div": lambda: binary(Divide(), right_dim=4),
    "pow": lambda: binary(Power(), positive_left=True),
    "maximum": lambda: binary(Maximum()),
    "minimum": lambda: binary(Minimum(), right_dim=4),
    "matmul": matmul,
    "sum": lambda: shaped(Sum(axis=1)),
    "sum_all": lambda: shaped(Sum()),
    "sum_all_keepdim": lambda: shaped(Sum(keepdim=True)),
    "sum_axes_keepdim": lambda: shaped(Sum(axis=(0, -1), keepdim=True)),
    "mean": lambda: shaped(Mean(axis=-1)),
    "mean_all_keepdim": lambda: shaped(Mean(keepdim=True)),
    "max": lambda: shaped(Max(axis=1, keepdim=True)),
    "max_all": lambda: shaped(Max()),
    "max_axes": lambda: shaped(Max(axis=(0, 2))),
    "transpose": lambda: shaped(Transpose()),
    "transpose_axes": lambda: shaped(Transpose(axes=(1, 0, 2))),
    "reshape": lambda: shaped(Reshape((6, -1))),
    "flatten": lambda: shaped(Flatten()),
    "flatten_range": lambda: shaped(Flatten(start_dim=0, end_dim=1)),
}


def test_every_numpy_primitive_is_covered() -> None:
    """Torch lowers every primitive the NumPy reference does; each is tested here or in the conformance kit."""
    from mithril.testing import CASES as KIT_CASES  # noqa: PLC0415

    assert not set(NUMPY_OPS) - set(TORCH_OPS)
    tested = {case.split("_")[0] for case in CASES} | {case.primitive for case in KIT_CASES}
    # identity and batch_norm_inference are the inference forms of dropout and batch_norm (test_torch_layers,
    # and the torch.nn parity cases in eval mode).
    assert tested | {"identity", "batch_norm_inference"} >= set(NUMPY_OPS)


def check_against_numpy(model: Model, shapes: Shapes, device: str = "cpu", symbolic: bool = False) -> None:
    """Same params, inputs and output gradient on both backends; outputs and gradients to 1e-10."""
    tb = ml.TorchBackend(dtype=ml.float64, device=device)
    nb = ml.NumpyBackend(dtype=ml.float64)
    tm = ml.compile(model, tb, shapes=shapes)
    nm = ml.compile(model, nb, shapes=shapes)
    if symbolic:
        tm = ml.compile(model, tb, shapes={k: [None, *v[1:]] for k, v in shapes.items()})
    params = tm.randomize_params(seed=11) if not symbolic else {
        k: tb.array(nb.array(nm.randomize_params(seed=11)[k])) for k in nm.param_keys
    }
    inputs = {k: tb.randn(*v) for k, v in shapes.items()}
    n_params = {k: tb.to_numpy(v) for k, v in params.items()}
    n_inputs = {k: tb.to_numpy(v) for k, v in inputs.items()}
    expected = nm.evaluate(n_params, n_inputs)["output"]
    g = np.random.default_rng(5).standard_normal(np.shape(expected))
    n_out, n_grads = nm.evaluate(n_params, n_inputs, {"output": g})
    t_fwd = tm.evaluate(params, inputs)["output"]
    t_out, t_grads = tm.evaluate(params, inputs, {"output": tb.array(g)})
    np.testing.assert_allclose(tb.to_numpy(t_fwd), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tb.to_numpy(t_out["output"]), n_out["output"], rtol=1e-10, atol=1e-12)
    assert list(t_grads) == list(n_grads)
    for key, grad in n_grads.items():
        np.testing.assert_allclose(tb.to_numpy(t_grads[key]), grad, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_primitive_matches_numpy(case: str) -> None:
    check_against_numpy(*CASES[case]())


@pytest.mark.parametrize("case", ["linear", "sum_all_keepdim", "max_axes", "transpose", "flatten", "add"])
def test_primitive_with_symbolic_batch_matches_numpy(case: str) -> None:
    check_against_numpy(*CASES[case](), symbolic=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["linear", "pow", "matmul", "max"])
def test_primitive_on_device(device: str, case: str) -> None:
    check_against_numpy(*CASES[case](), device=device)


def test_maximum_ties_split_the_gradient_like_numpy() -> None:
    model = Model()
    model |= Linear(3)(input="input", output="a")
    model |= Relu()(input="a", output="r")
    model |= Maximum()(left="r", right="a", output="output")
    tb, nb = ml.TorchBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    tm = ml.compile(model, tb, shapes={"input": [4, 2]})
    nm = ml.compile(model, nb, shapes={"input": [4, 2]})
    params = tm.randomize_params(seed=2)
    x, g = tb.randn(4, 2), tb.ones(4, 3)
    _, t_grads = tm.evaluate(params, {"input": x}, {"output": g})
    _, n_grads = nm.evaluate({k: tb.to_numpy(v) for k, v in params.items()}, {"input": tb.to_numpy(x)},
                             {"output": tb.to_numpy(g)})
    for key in n_grads:
        np.testing.assert_allclose(tb.to_numpy(t_grads[key]), n_grads[key], rtol=1e-10, atol=1e-12)
