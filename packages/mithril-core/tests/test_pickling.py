"""Models and compiled models pickle and deep-copy: a compiled model travels as its compile recipe."""

from __future__ import annotations

import copy
import inspect
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mithril as ml
import mithril.models as models
from mithril.backend import BackendOptions
from mithril.testing.models import quickstart_mlp

ROUND_TRIPS = {"pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "deepcopy": copy.deepcopy}
# constructor arguments of the layers that need some
LAYER_ARGS: dict[str, dict[str, Any]] = {
    "Linear": {"dimension": 4},
    "Conv1d": {"in_channels": 2, "out_channels": 3, "kernel_size": 3},
    "Conv2d": {"in_channels": 2, "out_channels": 3, "kernel_size": 3},
    "MaxPool1d": {"kernel_size": 2},
    "MaxPool2d": {"kernel_size": 2},
    "AvgPool1d": {"kernel_size": 2},
    "AvgPool2d": {"kernel_size": 2},
    "BatchNorm1d": {"num_features": 3},
    "BatchNorm2d": {"num_features": 3},
    "GroupNorm": {"num_groups": 1, "num_channels": 3},
    "LayerNorm": {"normalized_shape": [3]},
    "Embedding": {"num_embeddings": 5, "embedding_dim": 3},
    "Reshape": {"shape": (2, -1)},
    "Transpose": {"axes": (1, 0)},
    "Index": {"index": ":, -1"},
    "Gather": {"dim": 1},
    "Cumsum": {"dim": 0},
    "RMSNorm": {"normalized_shape": 4},
    "InProjection": {"embed_dim": 4, "index": 0},
    "AttentionHeads": {"num_heads": 2},
    "RotaryEmbedding": {"dim": 4},
}
LAYERS = sorted(
    name
    for name, cls in vars(models).items()
    if inspect.isclass(cls) and issubclass(cls, models.Operator) and cls is not models.Operator
)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_every_layer_round_trips_inside_a_model(name: str, trip: str) -> None:
    model = models.Model(name="holder")
    model |= getattr(models, name)(**LAYER_ARGS.get(name, {}))
    copied = ROUND_TRIPS[trip](model)
    assert [c.describe() for c in copied.children] == [c.describe() for c in model.children]
    assert copied.shapes == model.shapes


@dataclass(frozen=True)
class UnrollOptions(BackendOptions):
    """A declared backend compile option, to check that it survives a round trip."""

    unroll: int = 1


class UnrollBackend(ml.NumpyBackend):
    """NumPy with one declared compile option."""

    compile_options_type = UnrollOptions


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_the_recipe_survives_a_round_trip(trip: str) -> None:
    compiled = ml.compile(
        quickstart_mlp(),
        UnrollBackend(dtype=ml.float64),
        {"input": [3, 20]},
        inference=True,
        outputs=["output"],
        trainable_keys=(),
        unroll=4,
    )
    copied = ROUND_TRIPS[trip](compiled)
    assert copied.recipe.shapes == {"input": [3, 20]}
    assert (copied.recipe.inference, copied.recipe.outputs, copied.recipe.backend_options) == (
        True,
        ["output"],
        {"unroll": 4},
    )
    assert copied.options.backend == UnrollOptions(unroll=4)
    assert type(copied.backend) is UnrollBackend and copied.backend.dtype is ml.float64
    assert copied.backend is not compiled.backend
    params = compiled.randomize_params(seed=0)
    x = {"input": np.random.default_rng(0).standard_normal((3, 20))}
    np.testing.assert_array_equal(copied.evaluate(params, x)["output"], compiled.evaluate(params, x)["output"])
    with pytest.raises(ml.UnsupportedError, match="inference only"):
        copied.evaluate({}, {}, {"output": np.ones((3, 10))})


def test_trainable_keys_and_static_inference_survive() -> None:
    model = models.Model()
    model |= models.Multiply()(left="input", right="scale", output="output")
    compiled = ml.compile(model, ml.NumpyBackend(), {"input": [2], "scale": [2]}, trainable_keys=["scale"])
    copied = pickle.loads(pickle.dumps(compiled))
    assert copied.param_keys == ["scale"] and copied.input_keys == ["input"]
    static = ml.compile(quickstart_mlp(), ml.NumpyBackend(), {"input": [2, 20]}, static_inference=True)
    assert pickle.loads(pickle.dumps(static)).options.static_inference


def test_loading_does_not_write_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "generated.py"
    compiled = ml.compile(quickstart_mlp(), ml.NumpyBackend(), {"input": [2, 20]}, file_path=str(path))
    path.unlink()
    pickle.loads(pickle.dumps(compiled))
    assert not path.exists()


def test_a_backend_pickles_as_its_constructor_arguments() -> None:
    backend = ml.NumpyBackend(dtype="float64")
    copied = pickle.loads(pickle.dumps(backend))
    assert type(copied) is ml.NumpyBackend and copied.dtype is ml.float64 and copied.device == "cpu"
