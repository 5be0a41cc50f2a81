"""Shape solver: symbolic and variadic dims, errors at composition, rollback, property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mithril as ml
from mithril.models import Add, Flatten, Linear, MatMul, Model, Relu, Reshape, Sum, Tanh, Transpose
from mithril.shapes import Dim, Shape, ShapeMismatch, Transaction, Var, copy_shapes, render, unify


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


# -- a shape fixing leading dims against one fixing trailing dims (issue 13) --------------------
def test_prefix_and_suffix_fixed_shapes_may_overlap() -> None:
    """[N, C, ...] against [..., 3]: at rank 2 the two fixed parts are the same dims."""
    n, c, va, vb = Dim(), Dim(), Var(), Var()
    with Transaction() as tx:
        unify([n, c, vb], [va, Dim(3)])
        tx.propagate()
        assert vb.binding is None and va.binding is None  # nothing follows until the rank is known
        unify([va, Dim(3)], [Dim(4), Dim(3)])
        tx.propagate()
    assert render([n, c, vb]) == "[4, 3]" and c.find().value == 3


def test_prefix_and_suffix_fixed_shapes_at_higher_rank() -> None:
    n, c, va, vb = Dim(), Dim(), Var(), Var()
    with Transaction() as tx:
        unify([n, c, vb], [va, Dim(7)])
        unify([n, c, vb], [Dim(4), Dim(3), Dim(5), Dim(7)])
        tx.propagate()
    assert render([va, Dim(7)]) == "[4, 3, 5, 7]"


def test_deferred_link_reports_a_mismatch_once_the_rank_is_known() -> None:
    n, va, vb = Dim(), Var(), Var()
    with pytest.raises(ShapeMismatch, match="linked earlier"), Transaction() as tx:
        unify([n, Dim(4), vb], [va, Dim(3)])
        tx.propagate()
        unify([va], [Dim(2)])
        tx.propagate()


def test_deferred_link_waits_through_partial_bindings() -> None:
    """Binding a variadic to dims around another variadic defers again; the link is kept."""
    n, c, va, vb, vc = Dim(), Dim(), Var(), Var(), Var()
    with Transaction() as tx:
        unify([n, c, vb], [va, Dim(3)])
        unify([va], [Dim(6), vc])
        tx.propagate()
        assert n.find().value == 6 and vb.binding is None
        unify([vc], [])
        tx.propagate()
    assert render([n, c, vb]) == "[6, 3]"


def test_copy_shapes_keeps_deferred_links() -> None:
    """Compile-time copies keep the pending link (and follow it to dims no copied shape holds)."""
    n, c, va, vb = Dim(), Dim(), Var(), Var()
    target, logits = Shape([n, vb]), Shape([va, Dim(3)])
    with Transaction() as tx:
        unify([n, c, vb], logits.items)
        tx.propagate()
    target_copy, logits_copy = copy_shapes([target, logits])
    with Transaction() as tx:
        unify(logits_copy.items, [Dim(8), Dim(3)])
        tx.propagate()
    assert render(target_copy.items) == "[8]"
    assert render(target.items) != "[8]" and va.binding is None  # the originals are untouched


def _fits(pre: list[int | None], suf: list[int | None], sizes: list[int]) -> bool:
    if len(sizes) < len(pre) + len(suf):
        return False
    tail = sizes[len(sizes) - len(suf) :]
    return all(p in (None, s) for p, s in zip(pre, sizes)) and all(p in (None, s) for p, s in zip(suf, tail))


FIXED = st.lists(st.one_of(st.none(), st.integers(1, 3)), max_size=3)


@settings(max_examples=300, deadline=None)
@given(FIXED, FIXED, FIXED, FIXED, st.lists(st.integers(1, 3), max_size=6))
def test_two_variadic_shapes_accept_exactly_the_shapes_both_fit(
    pre_a: list[int | None], suf_a: list[int | None], pre_b: list[int | None], suf_b: list[int | None], sizes: list[int]
) -> None:
    """unify never concludes more than the two templates say: a concrete shape fits after unify iff it fits both."""

    def template(pre: list[int | None], suf: list[int | None]) -> list[Dim | Var]:
        return [*(Dim(v) for v in pre), Var(), *(Dim(v) for v in suf)]

    a, b = template(pre_a, suf_a), template(pre_b, suf_b)
    expected = _fits(pre_a, suf_a, sizes) and _fits(pre_b, suf_b, sizes)
    try:
        with Transaction() as tx:
            unify(a, b)
            tx.propagate()
            unify(a, [Dim(s) for s in sizes])
            tx.propagate()
    except ShapeMismatch:
        assert not expected
    else:
        assert expected
        assert render(b) == render(a) == str(sizes)
