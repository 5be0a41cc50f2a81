"""Composition mistakes are refused where they are made, with messages naming the models and keys."""

from __future__ import annotations

import numpy as np
import pytest

import mithril as ml
from mithril.models import Add, Embedding, Linear, Model, Relu


def test_compiling_an_empty_model_names_it() -> None:
    with pytest.raises(ml.CompositionError, match=r"Model 'empty' has no layers"):
        ml.compile(Model(name="empty"), ml.NumpyBackend())


def test_compiling_a_model_of_empty_models_is_refused_too() -> None:
    outer = Model(name="outer")
    outer |= Model(name="inner")
    with pytest.raises(ml.CompositionError, match=r"Model 'outer' has no layers"):
        ml.compile(outer, ml.NumpyBackend())


def test_an_operator_feeding_its_own_input_is_a_cycle_of_length_one() -> None:
    model = Model()
    with pytest.raises(ml.CompositionError, match=r"cycle: its output 'output' and its input 'right'.*'b'"):
        model |= Add()(left="a", right="b", output="b")
    assert model.children == []


def test_a_cycle_through_an_existing_key_of_length_one() -> None:
    model = Model()
    model |= Relu()(input="b", output="c")
    with pytest.raises(
        ml.CompositionError, match=r"cycle: its output 'output' and its input 'right' .* \(b -> Add -> b\)"
    ):
        model |= Add()(left="a", right="b", output="b")


def test_a_cycle_of_length_two_names_its_keys() -> None:
    model = Model()
    model |= Relu()(input="a", output="b")
    with pytest.raises(ml.CompositionError, match=r"Model \|= ReLU: this would create a cycle.*a -> b -> ReLU -> a"):
        model |= Relu()(input="b", output="a")


def test_a_cycle_of_length_three_names_its_keys() -> None:
    model = Model(name="model")
    model |= Relu()(input="a", output="b")
    model |= Relu()(input="b", output="c")
    with pytest.raises(ml.CompositionError, match=r"a -> b -> c -> ReLU -> a"):
        model += Relu()(input="c", output="a")


def test_a_cycle_closed_by_chaining_says_plus_equals() -> None:
    model = Model(name="model")
    model |= Relu()(input="a", output="b")
    with pytest.raises(ml.CompositionError, match=r"'model' \+= ReLU: this would create a cycle.*a -> b -> ReLU -> a"):
        model += Relu()(output="a")


def _block() -> Model:
    inner = Model(name="block")
    inner |= Relu()(input="x", output="h")
    inner |= Relu()(input="h", output="y")
    return inner


def test_a_cycle_through_a_nested_model_is_refused() -> None:
    model = Model(name="model")
    model |= _block()(x="a", y="b")
    with pytest.raises(ml.CompositionError, match=r"a -> b -> ReLU -> a"):
        model |= Relu()(input="b", output="a")


def test_adding_a_nested_model_that_closes_a_cycle_is_refused() -> None:
    model = Model(name="model")
    model |= Relu()(input="b", output="a")
    with pytest.raises(ml.CompositionError, match=r"Model 'block': this would create a cycle.*b -> a -> Model"):
        model |= _block()(x="a", y="b")


def test_a_nested_model_feeding_its_own_input_is_refused() -> None:
    inner = Model(name="sum")
    inner |= Add()(left="p", right="q", output="r")
    model = Model()
    with pytest.raises(ml.CompositionError, match=r"its output 'r' and its input 'p' are both connected to 'a'"):
        model |= inner(p="a", r="a")


def test_two_outputs_of_one_child_cannot_share_a_name() -> None:
    inner = Model(name="pair")
    inner |= Relu()(input="x", output="y")
    inner |= Relu()(input="x", output="z")
    model = Model()
    with pytest.raises(ml.CompositionError, match=r"keys 'y' and 'z' are both outputs connected to 'out'"):
        model |= inner(x="a", y="out", z="out")


def test_keys_given_one_name_share_one_connection() -> None:
    model = Model()
    model |= Add()(left="x", right="x", output="y")
    compiled = ml.compile(model, ml.NumpyBackend(), {"x": [3]}, outputs=["y"])
    assert compiled.input_keys == ["x"]
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(compiled.evaluate({}, {"x": x})["y"], 2 * x)


def test_a_named_key_of_a_nested_model_and_its_alias_input_are_one_connection() -> None:
    model = Model()
    model |= _block()(x="a", y="b")
    compiled = ml.compile(model, ml.NumpyBackend(), {"a": [2]}, outputs=["b"])
    assert compiled.input_keys == ["a"]
    assert model.external_keys()["input"] is model.external_keys()["a"]


def test_an_alias_connected_to_two_names_is_refused() -> None:
    model = Model()
    with pytest.raises(ml.CompositionError, match=r"keys \['x', 'input'\] of Model 'block' are one connection"):
        model |= _block()(x="a", input="c")


def test_a_shape_mismatch_names_the_producer_the_child_the_key_and_both_shapes() -> None:
    encoder = Model(name="encoder")
    encoder |= Linear(4)(input="x", output="y")
    model = Model(name="model")
    model |= encoder(x="x", y="h")
    with pytest.raises(ml.ShapeError) as info:
        model |= Embedding(10, 3, name="table")(input="q", weight="h")
    message = str(info.value)
    assert "Model 'model': shape mismatch at key 'h'" in message
    assert "Embedding 'table' key 'weight' expects [10, 3]" in message
    assert "but 'h' has shape [..., 4] (produced by Model 'encoder' key 'y'" in message


def test_a_shape_mismatch_at_an_input_names_the_model_that_takes_it() -> None:
    model = Model(name="model")
    model |= Linear(8, name="first")(input="input", weight="w", output="h")
    with pytest.raises(ml.ShapeError) as info:
        model |= Linear(5, name="second")(input="h", weight="w")
    message = str(info.value)
    assert "Linear(dimension=5) 'second' key 'weight' expects [5, 8]" in message
    assert "but 'w' has shape [8, d0] (taken as input by Linear(dimension=8) 'first' key 'weight'" in message


def test_keys_sharing_a_new_name_must_agree_on_shape() -> None:
    inner = Model(name="pair")
    inner |= Linear(4)(input="x", weight="w1", output="y")
    inner |= Linear(3)(input="x", weight="w2", output="z")
    model = Model()
    with pytest.raises(
        ml.ShapeError, match=r"at key 'w': .* key 'w2' expects \[3, .*given to Model 'pair' key 'w1' too"
    ):
        model |= inner(w1="w", w2="w")
