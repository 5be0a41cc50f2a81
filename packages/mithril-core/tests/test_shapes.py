"""Shape solver: symbolic and variadic dims, errors at composition, rollback, property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mithril as ml
from mithril.models import Add, Flatten, Linear, MatMul, Model, Relu, Reshape, Sum, Tanh, Transpose
from mithril.shapes import Dim, ShapeMismatch, Transaction, Var, render, unify


def test_unify_variadic_against_fixed() -> None:
    v, d = Var(), Dim()
    with Transaction():
        unify([v, d], [Dim(2), Dim(3), Dim(4)])
    assert render([v, d]) == "[2, 3, 4]"


def test_unify_two_variadics_with_suffixes() -> None:
    va, vb = Var(), Var()
    with Transaction():
        unify([va, Dim(5)], [vb, Dim(4), Dim(5)])
        unify([vb], [Dim(7)])
    assert render([va, Dim(5)]) == "[7, 4, 5]"


def test_failed_unification_rolls_back() -> None:
    a, b = Dim(), Dim(3)
    with pytest.raises(ShapeMismatch), Transaction() as tx:
        unify([a, Dim(2)], [b, Dim(5)])
        tx.propagate()
    assert a.find().value is None


def test_mismatch_at_composition_names_models_key_and_shapes() -> None:
    model = Model()
    model |= Linear(8)(input="input", output="h")
    model |= Linear(4, bias=False)(input="input", weight="w", output="o")
    with pytest.raises(ml.ShapeError) as info:
        model |= MatMul()(left="h", right="w", output="z")
    text = str(info.value)
    assert "MatMul" in text and "'h'" in text or "'w'" in text


def test_broadcast_error_at_add_and_model_unchanged() -> None:
    model = Model()
    model |= Linear(8)(input="input", output="a")
    model |= Linear(5)(input="input", output="b")
    before = model.shapes
    with pytest.raises(ml.ShapeError, match="cannot broadcast dimension 8 with 5"):
        model |= Add()(left="a", right="b")
    assert model.shapes == before and len(model.children) == 2


def test_compile_shapes_complete_and_errors_name_key() -> None:
    model = Model()
    model |= Linear(3)
    backend = ml.NumpyBackend()
    with pytest.raises(ml.ShapeError, match=r"shapes\['output'\] = \[2, 4\].*\[\.\.\., 3\]"):
        ml.compile(model, backend, shapes={"output": [2, 4]})
    with pytest.raises(ml.KeyNotFoundError, match="unknown key 'inp'"):
        ml.compile(model, backend, shapes={"inp": [2, 4]})
    with pytest.raises(TypeError, match="list of ints"):
        ml.compile(model, backend, shapes={"input": "2x4"})
    # the logical model is untouched by compile-time shapes
    assert model.shapes["input"] == ("...", "d0")


def test_symbolic_batch_runs_any_batch_size() -> None:
    model = Model()
    model |= Linear(4)
    model += Tanh()
    backend = ml.NumpyBackend()
    compiled = ml.compile(model, backend, shapes={"input": [None, 3]})
    params = compiled.randomize_params(seed=0)
    for batch in (1, 7, 32):
        assert compiled.evaluate(params, {"input": backend.randn(batch, 3)})["output"].shape == (batch, 4)


def test_parameters_need_known_shapes() -> None:
    model = Model()
    model |= Linear(4)
    compiled = ml.compile(model, ml.NumpyBackend())
    with pytest.raises(ml.ShapeError, match=r"linear_0.weight.*\[4, d0\].*shapes="):
        compiled.randomize_params()


def test_view_rules() -> None:
    model = Model()
    model |= Flatten()(input="input", output="f")
    model |= Transpose()(input="f", output="t")
    model |= Reshape((-1, 2))(input="t", output="r")
    model |= Sum(axis=0, keepdim=True)(input="r", output="output")
    compiled = ml.compile(model, ml.NumpyBackend(), shapes={"input": [2, 3, 4]}, outputs=["output", "t"])
    assert compiled.shapes["t"] == (12, 2) and compiled.shapes["output"] == (1, 2)


LAYERS = st.sampled_from(["linear", "relu", "tanh", "sum_last"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(LAYERS, st.integers(1, 6)), min_size=1, max_size=8), st.integers(1, 5), st.integers(1, 4))
def test_random_chains_infer_the_shape_numpy_computes(layers: list[tuple[str, int]], batch: int, width: int) -> None:
    model = Model()
    for i, (kind, size) in enumerate(layers):
        layer = {
            "linear": lambda n=size: Linear(n),
            "relu": Relu,
            "tanh": Tanh,
            "sum_last": lambda: Sum(axis=-1, keepdim=True),
        }[kind]()
        if i == 0:
            model |= layer
        else:
            model += layer
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(model, backend, shapes={"input": [batch, width]})
    out = compiled.evaluate(compiled.randomize_params(seed=0), {"input": backend.randn(batch, width)})["output"]
    assert compiled.shapes["output"] == out.shape


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))
def test_tied_weight_mismatch_errors_at_plus_equal(a: int, b: int, c: int) -> None:
    model = Model()
    model |= Linear(a)(input="input", output="h")
    model += Linear(b)(input="h", weight="w", output="k")
    if (b, a) != (c, b):
        with pytest.raises(ml.ShapeError, match="'w'"):
            model += Linear(c)(input="k", weight="w")
        assert model.shapes["w"] == (b, a)
    else:
        model += Linear(c)(input="k", weight="w")
        assert model.shapes["output"] == ("...", c)
