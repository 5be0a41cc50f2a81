"""ml.save_model / ml.load_model: every catalogue layer and composite models round-trip through JSON."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mithril as ml
import mithril.models as models
from mithril.models import Add, Linear, Model, Operator, Relu
from mithril.serialization import FORMAT_VERSION, register_layer
from mithril.serialization.json_format import FormatError
from mithril.testing.models import quickstart_cnn, quickstart_cnn1d, quickstart_mlp

# per layer: constructor arguments (not the defaults where a layer has options) and input shapes
FLOAT = (3, 4)
CASES: dict[str, tuple[dict[str, Any], dict[str, tuple[int, ...]]]] = {
    "Linear": ({"dimension": 5, "bias": False}, {"input": FLOAT}),
    "Sum": ({"axis": 1, "keepdim": True}, {"input": FLOAT}),
    "Mean": ({"axis": (0, 1)}, {"input": FLOAT}),
    "Max": ({"axis": 0}, {"input": FLOAT}),
    "Transpose": ({"axes": (1, 0)}, {"input": FLOAT}),
    "Reshape": ({"shape": (2, -1)}, {"input": FLOAT}),
    "Flatten": ({"start_dim": 0}, {"input": (2, 3, 4)}),
    "Conv1d": (
        {"in_channels": 2, "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2},
        {"input": (2, 2, 9)},
    ),
    "Conv2d": (
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "dilation": 2, "padding": "same", "bias": False},
        {"input": (2, 2, 7, 7)},
    ),
    "MaxPool1d": ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, {"input": (2, 3, 9)}),
    "MaxPool2d": ({"kernel_size": 2, "dilation": 2}, {"input": (2, 3, 8, 8)}),
    "AvgPool1d": ({"kernel_size": 3, "padding": 1, "count_include_pad": False}, {"input": (2, 3, 9)}),
    "AvgPool2d": ({"kernel_size": 2, "divisor_override": 3}, {"input": (2, 3, 8, 8)}),
    "BatchNorm1d": ({"num_features": 3, "eps": 1e-3, "momentum": 0.2}, {"input": (4, 3)}),
    "BatchNorm2d": ({"num_features": 3, "affine": False}, {"input": (4, 3, 5, 5)}),
    "GroupNorm": ({"num_groups": 2, "num_channels": 4, "eps": 1e-4}, {"input": (2, 4, 5)}),
    "LayerNorm": ({"normalized_shape": [4], "bias": False}, {"input": FLOAT}),
    "Embedding": ({"num_embeddings": 6, "embedding_dim": 3}, {"input": (2, 5)}),
    "GELU": ({"approximate": "tanh"}, {"input": FLOAT}),
    "LeakyReLU": ({"negative_slope": 0.2}, {"input": FLOAT}),
    "LeakyRelu": ({}, {"input": FLOAT}),
    "Softmax": ({"dim": 0}, {"input": FLOAT}),
    "LogSoftmax": ({"dim": 1}, {"input": FLOAT}),
    "Dropout": ({"p": 0.25}, {"input": FLOAT}),
    "MSELoss": ({"reduction": "sum"}, {"input": FLOAT, "target": FLOAT}),
    "CrossEntropyLoss": (
        {"weight": [1.0, 2.0, 0.5, 1.0], "label_smoothing": 0.1, "ignore_index": 1},
        {"input": FLOAT, "target": (3,)},
    ),
    "MatMul": ({}, {"left": (3, 4), "right": (4, 2)}),
    "Index": ({"index": ":, -1"}, {"input": FLOAT}),
    "Gather": ({"dim": 1}, {"input": FLOAT, "index": (3, 2)}),
    "Cumsum": ({"dim": -1}, {"input": FLOAT}),
    "RMSNorm": ({"normalized_shape": 4, "eps": 1e-5}, {"input": FLOAT}),
    "InProjection": ({"embed_dim": 4, "index": 2}, {"input": FLOAT}),
    "AttentionHeads": ({"num_heads": 2, "is_causal": True}, {"query": (2, 3, 4), "key": (2, 3, 4), "value": (2, 3, 4)}),
    "RotaryEmbedding": ({"dim": 4, "max_position_embeddings": 8}, {"input": (2, 3)}),
}
LAYERS = sorted(
    name
    for name in models.__all__
    if inspect.isclass(getattr(models, name))
    and issubclass(getattr(models, name), Operator)
    and getattr(models, name) is not Operator
)


def make_layer(name: str) -> Operator:
    cls = getattr(models, name)
    args = CASES.get(name, ({}, {}))[0]
    try:
        return cls(**args)  # type: ignore[no-any-return]
    except TypeError as exc:
        pytest.fail(f"{name} needs constructor arguments: add it to CASES in {__file__} ({exc})")


def input_shapes(layer: Operator, name: str) -> dict[str, tuple[int, ...]]:
    given = CASES.get(name, ({}, {}))[1]
    return {k: given.get(k, FLOAT) for k, spec in layer.input_specs.items() if spec.role == "input"}


def round_trip(model: ml.models.BaseModel, tmp_path: Path) -> ml.models.BaseModel:
    path = tmp_path / "model.json"
    ml.save_model(model, path)
    return ml.load_model(path)


def data(layer_or_graph: ml.CompiledModel, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    kinds = {e.name: e.kind for e in layer_or_graph.graph.inputs}
    out: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if kinds.get(key) == "int":
            out[key] = rng.integers(0, 3, size=shape).astype(np.int64)
        else:
            out[key] = (np.abs(rng.standard_normal(shape)) + 0.5).astype(np.float32)
    return out


def assert_same_outputs(
    model: ml.models.BaseModel, loaded: ml.models.BaseModel, shapes: dict[str, tuple[int, ...]], inference: bool
) -> None:
    backend = ml.NumpyBackend()
    sizes = {k: list(v) for k, v in shapes.items()}
    first = ml.compile(model, backend, sizes, inference=inference)
    second = ml.compile(loaded, backend, sizes, inference=inference)
    assert second.param_keys == first.param_keys
    assert second.state_keys == first.state_keys and second.output_keys == first.output_keys
    assert second.shapes == first.shapes
    params = first.randomize_params(seed=0)
    inputs = data(first, shapes)
    expected, got = first.evaluate(params, inputs), second.evaluate(params, inputs)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("name", LAYERS)
def test_every_catalogue_layer_round_trips(name: str, tmp_path: Path) -> None:
    layer = make_layer(name)
    shapes = input_shapes(layer, name)
    model = Model(name="holder")
    model |= layer(**{key: key for key in shapes}, **{layer.canonical_output or "output": "output"})
    loaded = round_trip(model, tmp_path)
    assert isinstance(loaded, Model) and loaded.name == "holder"
    (child,) = loaded.children
    assert type(child) is type(layer) and child.attrs == layer.attrs and child.describe() == layer.describe()
    assert (child.canonical_input, child.canonical_output) == (layer.canonical_input, layer.canonical_output)
    assert_same_outputs(model, loaded, shapes, inference=name == "Dropout")


@pytest.mark.parametrize("build", [quickstart_mlp, quickstart_cnn, quickstart_cnn1d])
def test_quick_start_models_round_trip(build: Any, tmp_path: Path) -> None:
    model = build()
    shapes = {quickstart_mlp: (4, 20), quickstart_cnn: (2, 3, 16, 16), quickstart_cnn1d: (4, 4, 8)}[build]
    loaded = round_trip(model, tmp_path)
    assert loaded.shapes == model.shapes
    assert_same_outputs(model, loaded, {"input": shapes}, inference=False)


def block(width: int) -> Model:
    """A residual block with a named inner key."""
    inner = Model(name="block")
    inner |= Linear(dimension=width)(input="input", output="hidden")
    inner += Relu()(output="relu_out")
    inner |= Add()(left="input", right="relu_out", output="output")
    return inner


def test_nested_models_shared_weights_and_named_keys(tmp_path: Path) -> None:
    model = Model(name="net")
    model |= Linear(dimension=8, name="stem")(input="x", output="h")
    model += block(8)(input="h", output="b")
    model |= Linear(dimension=8)(input="b", weight="shared_w", output="y1")  # weight shared by name
    model |= Linear(dimension=8, bias=False)(input="y1", weight="shared_w", output="out")
    model |= Add()(left="out", right="h")
    loaded = round_trip(model, tmp_path)
    assert loaded.shapes == model.shapes
    assert isinstance(loaded, Model) and isinstance(loaded.children[1], Model)
    assert loaded.children[0].local_name == "stem" and loaded.children[1].local_name == "block"
    assert_same_outputs(model, loaded, {"x": (3, 8)}, inference=False)
    compiled = ml.compile(loaded, ml.NumpyBackend(), {"x": [3, 8]}, outputs=["output", "y1"])
    assert "shared_w" in compiled.param_keys and sorted(compiled.output_keys) == ["output", "y1"]


def test_the_file_is_json_with_a_format_version(tmp_path: Path) -> None:
    path = tmp_path / "mlp.json"
    ml.save_model(quickstart_mlp(), path)
    document = json.loads(path.read_text())
    assert document["format"] == "mithril.model" and document["version"] == FORMAT_VERSION
    assert document["mithril_version"] == ml.__version__
    assert document["model"]["children"][0]["model"] == {
        "type": "Linear",
        "arguments": {"dimension": 64},
        "attrs": {"dimension": 64},
    }


def test_a_newer_format_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    ml.save_model(quickstart_mlp(), path)
    document = json.loads(path.read_text())
    document["version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(document))
    with pytest.raises(FormatError, match=f"new.json.*format version {FORMAT_VERSION + 1}.*newer Mithril"):
        ml.load_model(path)


def test_an_unknown_layer_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "unknown.json"
    ml.save_model(quickstart_mlp(), path)
    path.write_text(path.read_text().replace('"Relu"', '"ReLU"').replace('"ReLU"', '"Swish"'))
    with pytest.raises(ml.UnsupportedError, match="unknown layer 'Swish'"):
        ml.load_model(path)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory .*missing.* does not exist"):
        ml.save_model(quickstart_mlp(), tmp_path / "missing" / "m.json")
    with pytest.raises(FileNotFoundError, match="no file"):
        ml.load_model(tmp_path / "absent.json")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00\x01binary")
    with pytest.raises(FormatError, match="weights.bin.*not a Mithril model file"):
        ml.load_model(other)
    whole = tmp_path / "m.json"
    ml.save_model(quickstart_mlp(), whole)
    truncated = tmp_path / "cut.json"
    truncated.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(FormatError, match="cut.json"):
        ml.load_model(truncated)
    json_other = tmp_path / "other.json"
    json_other.write_text('{"a": 1}')
    with pytest.raises(FormatError, match="other.json.*not a Mithril model file"):
        ml.load_model(json_other)


def test_an_unregistered_layer_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    class Mystery(Operator):
        def __init__(self) -> None:
            super().__init__("relu")

    model = Model()
    model |= Mystery()
    path = tmp_path / "m.json"
    path.write_text("old")
    with pytest.raises(ml.UnsupportedError, match="Mystery is not registered.*register_layer"):
        ml.save_model(model, path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


class Scale(Operator):
    """A third-party layer: multiply by a constant given to the constructor."""

    def __init__(self, factor: float, axes: tuple[int, ...] = (), *, name: str | None = None) -> None:
        super().__init__("leaky_relu", attrs={"negative_slope": float(factor)}, name=name)
        self.axes = axes


def test_a_third_party_layer_registers_and_round_trips(tmp_path: Path) -> None:
    register_layer(Scale, name="tests.Scale")
    model = Model()
    model |= Scale(0.5, axes=(1, 2), name="half")
    loaded = round_trip(model, tmp_path)
    (child,) = loaded.children  # type: ignore[attr-defined]
    assert isinstance(child, Scale) and child.axes == (1, 2) and child.local_name == "half"
    assert child.attrs["negative_slope"] == 0.5
    with pytest.raises(ValueError, match="already taken"):
        register_layer(Relu, name="tests.Scale")
    with pytest.raises(TypeError, match="subclass of mithril.models.Operator"):
        register_layer(Model)  # type: ignore[arg-type]
