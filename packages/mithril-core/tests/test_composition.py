"""Model algebra: |=, +=, call syntax, nesting, naming, and composition errors."""

from __future__ import annotations

import pytest

import mithril as ml
from mithril.models import Add, Linear, Model, Relu, Sigmoid
from mithril.testing.models import quickstart_mlp as mlp


def test_chain_links_canonical_keys_and_names_params() -> None:
    shapes = mlp().shapes
    assert shapes["input"] == ("...", "d0")
    assert shapes["output"] == ("...", 10)
    assert shapes["linear_0.weight"] == (64, "d0")
    assert shapes["linear_1.weight"] == (10, 64)
    assert shapes["linear_1.bias"] == (10,)


def test_call_syntax_links_by_name_and_keeps_user_names() -> None:
    model = Model()
    model |= Linear(8)(input="x", output="h")
    model += Relu()(input="h", output="r")
    model += Linear(2)(input="r", output="y")
    compiled = ml.compile(model, ml.NumpyBackend(), shapes={"x": [3, 5]}, outputs=["y", "h"])
    assert compiled.input_keys == ["x"]
    assert sorted(compiled.output_keys) == ["h", "y"]
    out = compiled.evaluate(compiled.randomize_params(seed=1), {"x": ml.NumpyBackend().randn(3, 5)})
    assert out["y"].shape == (3, 2) and out["h"].shape == (3, 8)


def test_nesting_at_depth_prefixes_parameter_names() -> None:
    inner = Model(name="block")
    inner |= Linear(4)
    inner += Sigmoid()
    middle = Model()
    middle |= inner
    middle += Linear(3)
    outer = Model()
    outer |= middle
    outer += Relu()
    compiled = ml.compile(outer, ml.NumpyBackend(), shapes={"input": [2, 6]})
    assert compiled.param_keys == [
        "model_0.block.linear_0.weight",
        "model_0.block.linear_0.bias",
        "model_0.linear_0.weight",
        "model_0.linear_0.bias",
    ]
    assert compiled.shapes["output"] == (2, 3)


def test_shared_weight_by_name() -> None:
    model = Model()
    model |= Linear(4, bias=False)(input="input", weight="w", output="a")
    model += Linear(4, bias=False)(input="a", weight="w")
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes={"input": [2, 4]})
    assert compiled.param_keys == ["w"]


def test_second_parallel_branch_reads_named_input() -> None:
    model = Model()
    model |= Linear(3)(input="input", output="a")
    model |= Linear(3)(input="input", output="b")
    model |= Add()(left="a", right="b", output="output")
    compiled = ml.compile(model, ml.NumpyBackend(), shapes={"input": [2, 5]})
    assert compiled.input_keys == ["input"] and compiled.shapes["output"] == (2, 3)


def test_unknown_key_in_chain_is_reported_with_known_keys() -> None:
    model = mlp()
    with pytest.raises(ml.CompositionError, match=r"'typo'.*known keys"):
        model += Relu()(input="typo")


def test_two_producers_are_rejected_and_model_unchanged() -> None:
    model = Model()
    model |= Linear(3)(input="x", output="h")
    before = dict(model.shapes)
    with pytest.raises(ml.CompositionError, match="two producers"):
        model |= Relu()(input="x", output="h")
    assert model.shapes == before and len(model.children) == 1


def test_cycle_is_rejected() -> None:
    model = Model()
    model |= Relu()(input="a", output="b")
    with pytest.raises(ml.CompositionError, match="cycle"):
        model |= Relu()(input="b", output="a")


def test_adding_a_model_twice_or_into_itself_fails() -> None:
    layer = Linear(2)
    model = Model()
    model |= layer
    with pytest.raises(ml.CompositionError, match="already part of"):
        Model().__ior__(layer)
    with pytest.raises(ml.CompositionError, match="itself"):
        model |= model


def test_unknown_key_in_call_names_model_and_keys() -> None:
    with pytest.raises(ml.KeyNotFoundError, match=r"Linear.*no key 'inputs'.*keys are"):
        Linear(2)(inputs="x")


def test_non_model_operand_is_a_type_error() -> None:
    model = Model()
    with pytest.raises(TypeError, match="expected a model"):
        model += 3  # type: ignore[operator]


def test_summary_lists_parameters_with_shapes() -> None:
    text = ml.compile(mlp(), ml.NumpyBackend(), shapes={"input": [32, 20]}).summary()
    assert "linear_0.weight" in text and "[64, 20]" in text and "total trainable values: 1,994" in text
