"""ml.export_onnx: onnx's full checker passes and onnxruntime agrees with Mithril's NumPy inference."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.models import (
    GELU,
    Add,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    GroupNorm,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MatMul,
    Max,
    MaxPool1d,
    MaxPool2d,
    Mean,
    Model,
    MSELoss,
    Operator,
    Relu,
    Reshape,
    Sigmoid,
    SiLU,
    Softmax,
    Sum,
    Tanh,
    Transpose,
)
from mithril.testing.models import quickstart_cnn, quickstart_cnn1d, quickstart_mlp

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'mithril[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("mithril_numpy", reason="the NumPy backend (mithril-numpy) is not installed")


def mlp_gelu_layernorm_softmax() -> Model:
    model = Model()
    model |= Linear(dimension=32)
    model += LayerNorm(normalized_shape=32)
    model += GELU()
    model += Dropout(p=0.3)
    model += Linear(dimension=16, bias=False)
    model += GELU(approximate="tanh")
    model += LayerNorm(normalized_shape=16, elementwise_affine=False)
    model += SiLU()
    model += LeakyReLU(negative_slope=0.2)
    model += Linear(dimension=10)
    model += Softmax()
    return model


def mlp_tail() -> Model:
    model = Model()
    model |= Linear(dimension=12)
    model += Tanh()
    model += Sigmoid()
    model += Reshape(shape=(-1, 3, 4))
    model += Transpose(axes=(0, 2, 1))
    model += LogSoftmax(dim=1)
    model += Sum(axis=2)
    return model


def cnn_norms_and_pools() -> Model:
    model = Model()
    model |= Conv2d(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1, dilation=1, groups=1)
    model += BatchNorm2d(num_features=8, affine=False)
    model += GroupNorm(num_groups=4, num_channels=8)
    model += Relu()
    model += AvgPool2d(kernel_size=2, padding=1, count_include_pad=False)
    model += Conv2d(in_channels=8, out_channels=8, kernel_size=3, padding="same", groups=2, bias=False)
    model += AvgPool2d(kernel_size=2, divisor_override=3)
    model += MaxPool2d(kernel_size=2, stride=1, dilation=1)
    model += Flatten()
    model += Linear(dimension=5)
    return model


def cnn1d_layers() -> Model:
    model = Model()
    model |= Conv1d(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2)
    model += BatchNorm1d(num_features=6)
    model += MaxPool1d(kernel_size=3, stride=2, padding=1)
    model += AvgPool1d(kernel_size=2)
    model += Conv1d(in_channels=6, out_channels=6, kernel_size=1, groups=3)
    model += Mean(axis=2)
    model += BatchNorm1d(num_features=6)
    return model


def embedding_and_two_inputs() -> Model:
    model = Model()
    model |= Embedding(num_embeddings=11, embedding_dim=8)(input="tokens", output="embedded")
    model |= MatMul()(left="embedded", right="mix", output="mixed")
    model |= Add()(left="mixed", right="embedded", output="summed")
    model += Max(axis=1, keepdim=True)(input="summed", output="output")
    return model


CASES: dict[str, tuple[Callable[[], Model], dict[str, list[int | None]]]] = {
    "quickstart_mlp": (quickstart_mlp, {"input": [None, 20]}),
    "mlp_gelu_layernorm_softmax": (mlp_gelu_layernorm_softmax, {"input": [None, 20]}),
    "mlp_tail": (mlp_tail, {"input": [None, 7]}),
    "quickstart_cnn": (quickstart_cnn, {"input": [None, 3, 16, 16]}),
    "cnn_norms_and_pools": (cnn_norms_and_pools, {"input": [None, 3, 15, 15]}),
    "quickstart_cnn1d": (quickstart_cnn1d, {"input": [None, 4, 8]}),
    "cnn1d_layers": (cnn1d_layers, {"input": [None, 4, 17]}),
    "embedding_and_two_inputs": (embedding_and_two_inputs, {"tokens": [None, 5], "mix": [8, 8]}),
}


def concrete(shapes: dict[str, list[int | None]], batch: int) -> dict[str, list[int]]:
    return {k: [batch if d is None else d for d in v] for k, v in shapes.items()}


def inputs_for(compiled: ml.CompiledModel, shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = {e.name: e.kind for e in compiled.graph.inputs}
    return {
        key: rng.integers(0, 11, size=shape).astype(np.int64)
        if kinds[key] == "int"
        else rng.standard_normal(shape).astype(np.float32)
        for key, shape in shapes.items()
    }


def trained(build: Callable[[], Model], shapes: dict[str, list[int]]) -> tuple[dict, dict | None]:
    """Parameters and, where the model has state, running statistics moved by two training steps."""
    backend = ml.NumpyBackend()
    compiled = ml.compile(build(), backend, shapes)
    params = compiled.randomize_params(seed=0)
    if not compiled.state_keys:
        return params, None
    for seed in (1, 2):
        compiled.evaluate(params, inputs_for(compiled, shapes, seed))
    return params, compiled.state


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_matches_numpy_inference(case: str, tmp_path: Path) -> None:
    build, shapes = CASES[case]
    params, state = trained(build, concrete(shapes, 4))
    path = tmp_path / f"{case}.onnx"
    ml.export_onnx(build(), path, params=params, state=state, shapes=shapes)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    batch_dims = {i.name: i.type.tensor_type.shape.dim[0] for i in proto.graph.input}
    for key, sizes in shapes.items():
        assert batch_dims[key].dim_param if sizes[0] is None else batch_dims[key].dim_value == sizes[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        sizes = concrete(shapes, batch)
        reference = ml.compile(build(), ml.NumpyBackend(), sizes, inference=True)
        x = inputs_for(reference, sizes, seed=batch)
        expected = reference.apply(params, x, state)[0] if state else reference.evaluate(params, x)
        (got,) = session.run(["output"], x)
        np.testing.assert_allclose(got, expected["output"], rtol=1e-5, atol=1e-6)


def test_losses_export_with_their_targets(tmp_path: Path) -> None:
    model = Model()
    model |= Linear(dimension=4)(input="input", output="logits")
    model |= CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.0], ignore_index=2)(input="logits", target="target", output="ce")
    model |= MSELoss(reduction="sum")(input="logits", target="goal", output="output")
    model |= Add()(left="ce", right="output", output="total")
    shapes: dict[str, list[int | None]] = {"input": [None, 3], "target": [None], "goal": [None, 4]}
    params = ml.compile(model, ml.NumpyBackend(), concrete(shapes, 5)).randomize_params(seed=0)
    path = tmp_path / "losses.onnx"
    ml.export_onnx(model, path, params=params, shapes=shapes)
    x = {
        "input": np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32),
        "target": np.array([0, 1, 2, 3, 1]),
        "goal": np.ones((5, 4), np.float32),
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["total"]  # the canonical output
    reference = ml.compile(model, ml.NumpyBackend(), concrete(shapes, 5), inference=True, outputs=["total"])
    (got,) = session.run(["total"], x)
    np.testing.assert_allclose(got, reference.evaluate(params, x)["total"], rtol=1e-5)


def test_a_layer_onnx_cannot_express_is_named(tmp_path: Path) -> None:
    model = Model()
    model |= Linear(dimension=4)(input="input", output="logits")
    model |= CrossEntropyLoss(label_smoothing=0.1)(input="logits", target="target", output="output")
    compiled = ml.compile(model, ml.NumpyBackend(), {"input": [2, 3], "target": [2]})
    path = tmp_path / "refused.onnx"
    with pytest.raises(ml.UnsupportedError, match="layer CrossEntropyLoss.*'crossentropyloss_0'.*label_smoothing"):
        ml.export_onnx(model, path, params=compiled.randomize_params(seed=0), shapes={"input": [None, 3]})

    class OneHot(Operator):
        def __init__(self) -> None:
            super().__init__("one_hot", attrs={"num_classes": 3})

    other = Model()
    other |= OneHot()(input="input", output="output")
    with pytest.raises(ml.UnsupportedError, match="layer OneHot.*'onehot_0'.*'one_hot' has no ONNX emitter"):
        ml.export_onnx(other, path, params={}, shapes={"input": [None]})
    assert not path.exists()


def test_missing_state_params_and_directory_are_clear_errors(tmp_path: Path) -> None:
    compiled = ml.compile(quickstart_cnn1d(), ml.NumpyBackend(), {"input": [2, 4, 8]})
    params = compiled.randomize_params(seed=0)
    with pytest.raises(ml.KeyNotFoundError, match=r"state must have the keys.*missing \['batchnorm1d_0.running_mean'"):
        ml.export_onnx(quickstart_cnn1d(), tmp_path / "m.onnx", params=params, shapes={"input": [None, 4, 8]})
    del params["linear_0.bias"]
    with pytest.raises(ml.KeyNotFoundError, match=r"params must have the keys.*missing \['linear_0.bias'\]"):
        ml.export_onnx(quickstart_cnn1d(), tmp_path / "m.onnx", params=params, state=compiled.initial_state())
    with pytest.raises(FileNotFoundError, match="directory .*absent.* does not exist"):
        ml.export_onnx(quickstart_mlp(), tmp_path / "absent" / "m.onnx", params={})
    with pytest.raises(ValueError, match="opset must be an int from 17"):
        ml.export_onnx(quickstart_mlp(), tmp_path / "m.onnx", params={}, opset=9)
    assert list(tmp_path.iterdir()) == []


def test_a_newer_opset_exports_too(tmp_path: Path) -> None:
    build, shapes = CASES["mlp_tail"]
    params, _ = trained(build, concrete(shapes, 2))
    path = tmp_path / "opset.onnx"
    ml.export_onnx(build(), path, params=params, shapes=shapes, opset=18)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 18
    x = {"input": np.ones((2, 7), np.float32)}
    expected = ml.compile(build(), ml.NumpyBackend(), {"input": [2, 7]}, inference=True).evaluate(params, x)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["output"], x)
    np.testing.assert_allclose(got, expected["output"], rtol=1e-5, atol=1e-6)


def test_without_onnx_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ml.UnsupportedError, match=r"mithril\[onnx\]"):
        ml.export_onnx(quickstart_mlp(), tmp_path / "m.onnx", params={})


def _zoo_decoder(name: str) -> tuple[Any, Any]:
    """(model builder, tiny config) of a mithril.zoo decoder."""
    from mithril.zoo import gpt2, llama

    if name == "gpt2":
        return gpt2.gpt2, gpt2.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    config = llama.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16,
    )  # fmt: skip
    return llama.llama, config


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_zoo_decoders_export_with_symbolic_batch_and_length(name: str, tmp_path: Path) -> None:
    """GPT-2, and Llama with grouped-query heads (its rotary embeddings need only the head size ahead of time),
    export for any batch and length and equal NumPy in onnxruntime."""
    build, config = _zoo_decoder(name)
    params = ml.compile(build(config), ml.NumpyBackend(), {"input_ids": [2, 8]}).randomize_params(seed=0)
    path = tmp_path / f"{name}.onnx"
    ml.export_onnx(build(config), path, params=params, shapes={"input_ids": [None, None]})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 5), (3, 8)):
        ids = np.random.default_rng(length).integers(0, 50, (batch, length))
        reference = ml.compile(build(config), ml.NumpyBackend(), {"input_ids": [batch, length]}, inference=True)
        expected = np.asarray(reference.evaluate(params, {"input_ids": ids})["logits"])
        (got,) = session.run(["logits"], {"input_ids": ids})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(("kv_heads", "causal"), [(4, False), (2, True)])
def test_attention_heads_with_grouped_heads_and_a_mask(kv_heads: int, causal: bool, tmp_path: Path) -> None:
    from mithril.models.attention import AttentionHeads

    model = Model()
    model |= AttentionHeads(4, kv_heads, is_causal=causal, attn_mask=True)(
        query="query", key="key", value="value", attn_mask="mask", output="output"
    )
    width = 8 * kv_heads
    shapes: dict[str, list[int | None]] = {"query": [None, 3, 32], "key": [None, 5, width], "value": [None, 5, width]}
    shapes["mask"] = [3, 5]
    path = tmp_path / "heads.onnx"
    ml.export_onnx(model, path, params={}, shapes=shapes)
    rng = np.random.default_rng(0)
    x = {k: rng.standard_normal([2 if d is None else d for d in s]).astype(np.float32) for k, s in shapes.items()}
    x["mask"][0, 1] = -np.inf
    reference = ml.compile(model, ml.NumpyBackend(), {k: list(v.shape) for k, v in x.items()}, inference=True)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["output"], x)
    np.testing.assert_allclose(got, reference.evaluate({}, x)["output"], rtol=1e-5, atol=1e-6)


INDEX_CASES = [
    (slice(None), -1),
    (Ellipsis, slice(None, 3)),
    (slice(None), slice(None, None, -1), slice(1, 5, 2)),
    (None, slice(None), 2, slice(None, None, -2)),
    (slice(-2, None), slice(1, -1)),
    (1,),
    (-1, slice(3, 0, -2), None),
    (slice(None, None, -1), Ellipsis, slice(-1, None, -3)),
    "chunk",
]


@pytest.mark.parametrize("index", INDEX_CASES, ids=lambda index: str(index).replace(" ", ""))
def test_indexing_exports_on_a_symbolic_axis(index: tuple | str, tmp_path: Path) -> None:
    """Index and Chunk as ONNX Slice/Squeeze/Unsqueeze equal NumPy's indexing, whatever the first axis' size."""
    from mithril.models.sequence import Chunk, Concat, Index

    model = Model()
    if index == "chunk":  # torch.chunk(x, 3, dim=-1), its last two pieces joined
        model |= Chunk(3, dim=-1)(input="input", output0="first", output1="second", output2="third")
        model |= Concat(2, dim=-1)(input0="second", input1="third", output="output")
        index = (Ellipsis, slice(2, None))
    else:
        model |= Index[index](input="input", output="output")
    path = tmp_path / "index.onnx"
    ml.export_onnx(model, path, params={}, shapes={"input": [None, 4, 6]})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        x = np.arange(batch * 24, dtype=np.float32).reshape(batch, 4, 6)
        np.testing.assert_array_equal(session.run(["output"], {"input": x})[0], x[index])
