"""Sequence layers compose with |= and +=, name their keys, and refuse bad indices and sizes clearly."""

from __future__ import annotations

import numpy as np
import pytest

import mithril as ml
from mithril.errors import IndexRangeError, ShapeError
from mithril.models import Chunk, Concat, Gather, Index, Linear, Model, Split, Where
from mithril.serialization.json_format import model_from_dict, model_to_dict


def test_index_sugar_and_text_build_the_same_layer() -> None:
    assert Index[:, -1].attrs == Index(":, -1").attrs == Index((slice(None), -1)).attrs
    assert Index[..., :64].describe() == "Index([..., :64])"
    assert Index[::-1, None, 2].attrs["index"] == ((None, None, -1), None, 2)


@pytest.mark.parametrize(
    ("index", "error"),
    [("a", ValueError), ("..., ...", ValueError), ("::0", ValueError), (1.5, TypeError), ([0, 1], TypeError)],
)
def test_bad_index_is_refused_at_construction(index: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="Index"):
        Index(index)


def test_index_composes_with_named_keys() -> None:
    model = Model()
    model |= Linear(4)(input="x", output="h")
    model += Index[:, -1](output="last")
    model |= Concat(2, dim=-1)(input0="h", input1="h", output="both")
    compiled = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), shapes={"x": [2, 3, 5]}, outputs=["last", "both"])
    params = compiled.randomize_params(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    out = compiled.evaluate(params, {"x": x})
    h = x @ params["linear_0.weight"].T + params["linear_0.bias"]
    np.testing.assert_allclose(out["last"], h[:, -1])
    np.testing.assert_allclose(out["both"], np.concatenate([h, h], -1))


def test_out_of_range_index_names_layer_and_shape() -> None:
    model = Model()
    model |= Linear(4)(input="x", output="h")
    model += Index[:, 3](output="y")
    with pytest.raises(ShapeError, match=r"index 3 is out of range for axis 1 of size 3.*input=\[2, 3, 4\]"):
        ml.compile(model, ml.NumpyBackend(), shapes={"x": [2, 3, 5]})


def test_too_many_indices_are_refused() -> None:
    model = Model()
    model |= Index[0, 0, 0](input="x", output="y")
    with pytest.raises(ShapeError, match="too many indices for a tensor of rank 2"):
        ml.compile(model, ml.NumpyBackend(), shapes={"x": [2, 3]})


def test_chunk_refuses_a_size_giving_fewer_chunks() -> None:
    with pytest.raises(ShapeError, match="chunk 3 does not exist"):
        ml.compile(Chunk(4), ml.NumpyBackend(), shapes={"input": [5, 2]}, outputs=["output0", "output3"])


def test_split_size_checks_the_number_of_outputs() -> None:
    with pytest.raises(ShapeError, match="into 3 pieces, not 2"):
        ml.compile(Split(2, num_outputs=2), ml.NumpyBackend(), shapes={"input": [5]}, outputs=["output0"])
    with pytest.raises(ValueError, match="num_outputs"):
        Split(2)


def test_split_sections_must_add_up_to_the_size() -> None:
    with pytest.raises(ShapeError, match="sections add up to 4, but axis 1 has size 5"):
        ml.compile(Split([1, 3], dim=1), ml.NumpyBackend(), shapes={"input": [2, 5]}, outputs=["output0"])


def test_split_keys_are_the_pieces() -> None:
    assert sorted(Split([1, 2, 3]).external_keys()) == ["input", "output0", "output1", "output2"]
    assert sorted(Chunk(2, dim=-1).external_keys()) == ["input", "output0", "output1"]
    assert sorted(Concat(3).external_keys()) == ["input", "input0", "input1", "input2", "output"]
    assert sorted(Where().external_keys()) == ["condition", "input", "other", "output"]


def test_concat_refuses_mismatched_sizes_off_the_axis() -> None:
    with pytest.raises(ShapeError, match=r"ConcatPair\(axis=0\).*3 != 4.*left=\[2, 3\], right=\[2, 4\]"):
        ml.compile(Concat(2, dim=0), ml.NumpyBackend(), shapes={"input0": [2, 3], "input1": [2, 4]})


def test_gather_index_input_is_range_checked() -> None:
    compiled = ml.compile(Gather(1), ml.NumpyBackend(dtype=ml.float64), shapes={"input": [2, 3], "index": [2, 2]})
    x = np.zeros((2, 3))
    with pytest.raises(
        IndexRangeError, match=r"Gather\(axis=1\): inputs\['index'\] holds index 3, outside the valid range \[0, 3\)"
    ):
        compiled.evaluate({}, {"input": x, "index": np.array([[0, 3], [1, 2]])})


def test_sequence_layers_survive_save_and_load() -> None:
    for layer in (Index[1:, ..., ::-2], Split([1, 2], dim=1), Chunk(3), Concat(3, dim=1), Gather(0), Where()):
        data = model_to_dict(layer)
        data["model"].pop("class", None)  # composite layers load back as a Model of the same children
        loaded = model_from_dict(data)
        assert model_to_dict(loaded) == data
        assert set(loaded.external_keys()) - {"output"} == set(layer.external_keys()) - {"output"}
