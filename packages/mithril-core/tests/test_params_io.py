"""ml.save_params / ml.load_params / ml.load_state: safetensors files read back by safetensors itself."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import mithril as ml
from mithril.serialization import STATE_PREFIX, read_metadata
from mithril.serialization.json_format import FormatError
from mithril.testing.models import quickstart_cnn1d, quickstart_mlp


def trained_cnn() -> tuple[ml.CompiledModel, dict[str, np.ndarray], dict[str, np.ndarray]]:
    backend = ml.NumpyBackend()
    compiled = ml.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]})
    params = compiled.randomize_params(seed=0)
    compiled.evaluate(params, {"input": backend.randn(4, 4, 8)})  # moves the running statistics
    assert compiled.state is not None
    return compiled, params, compiled.state


def test_safetensors_reads_the_same_keys_and_values(tmp_path: Path) -> None:
    compiled, params, state = trained_cnn()
    path = tmp_path / "cnn.safetensors"
    ml.save_params(path, params, state=state)
    read = load_file(str(path))
    assert set(read) == set(params) | {STATE_PREFIX + k for k in state}
    for key, value in params.items():
        np.testing.assert_array_equal(read[key], value)
    for key, value in state.items():
        np.testing.assert_array_equal(read[STATE_PREFIX + key], value)
    metadata = read_metadata(path)
    assert metadata == {"format": "mithril.params", "mithril_version": ml.__version__, "dtype": "float32"}
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata()["mithril_version"] == ml.__version__


def test_a_round_trip_gives_the_same_outputs(tmp_path: Path) -> None:
    compiled, params, state = trained_cnn()
    path = tmp_path / "cnn.safetensors"
    ml.save_params(path, params, state=state)
    backend = ml.NumpyBackend()
    again = ml.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]}, inference=True)
    loaded = ml.load_params(path, backend, compiled=again)
    loaded_state = ml.load_state(path, backend, compiled=again)
    assert list(loaded) == compiled.param_keys and set(loaded_state) == set(compiled.state_keys)
    x = {"input": backend.randn(4, 4, 8)}
    reference = ml.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]}, inference=True)
    expected = reference.apply(params, x, state)[0]["output"]
    np.testing.assert_array_equal(again.apply(loaded, x, loaded_state)[0]["output"], expected)


def test_files_without_state_and_plain_safetensors_files_load(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"linear_0.weight": np.ones((2, 3), np.float32)}, str(path))  # written by safetensors alone
    assert ml.load_state(path, ml.NumpyBackend()) == {}
    np.testing.assert_array_equal(ml.load_params(path, ml.NumpyBackend())["linear_0.weight"], np.ones((2, 3)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_half_and_double_precision(dtype: str, tmp_path: Path) -> None:
    native = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    values = {"w": (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(native)}
    path = tmp_path / "half.safetensors"
    ml.save_params(path, values)
    assert read_metadata(path)["dtype"] == dtype
    if dtype != "bfloat16":  # safetensors.numpy has no bfloat16
        np.testing.assert_array_equal(load_file(str(path))["w"], values["w"])
    for backend_dtype in ("float32", "float64"):
        loaded = ml.load_params(path, ml.NumpyBackend(dtype=backend_dtype))["w"]
        assert loaded.dtype == np.dtype(backend_dtype)
        np.testing.assert_array_equal(loaded, values["w"].astype(backend_dtype))
    if dtype == "float16":
        loaded = ml.load_params(path, ml.NumpyBackend(dtype="float16"))["w"]
        np.testing.assert_array_equal(loaded, values["w"])


def test_a_mismatched_file_names_missing_and_misshaped_keys(tmp_path: Path) -> None:
    backend = ml.NumpyBackend()
    compiled = ml.compile(quickstart_mlp(), backend, {"input": [None, 20]})
    params = compiled.randomize_params(seed=0)
    path = tmp_path / "mlp.safetensors"
    ml.save_params(path, {k: v for k, v in params.items() if k != "linear_1.bias"} | {"extra": np.ones(2)})
    with pytest.raises(ml.KeyNotFoundError, match=r"missing \['linear_1.bias'\], unexpected \['extra'\]"):
        ml.load_params(path, backend, compiled=compiled)
    ml.save_params(path, {**params, "linear_0.weight": np.ones((64, 21), np.float32)})
    with pytest.raises(ml.ShapeError, match=r"mlp.safetensors.*'linear_0.weight': expected \[64, 20\], got \[64, 21\]"):
        ml.load_params(path, backend, compiled=compiled)
    with pytest.raises(ml.KeyNotFoundError, match="state do not match"):
        cnn = ml.compile(quickstart_cnn1d(), backend, {"input": [4, 4, 8]})
        ml.load_state(path, backend, compiled=cnn)


def test_bad_files_are_clear_errors_and_nothing_is_written_half(tmp_path: Path) -> None:
    params = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(FileNotFoundError, match="directory .*nowhere.* does not exist"):
        ml.save_params(tmp_path / "nowhere" / "p.safetensors", params)
    json_file = tmp_path / "model.json"
    ml.save_model(quickstart_mlp(), json_file)
    with pytest.raises(FormatError, match="model.json.*not a complete safetensors file"):
        ml.load_params(json_file, ml.NumpyBackend())
    whole = tmp_path / "p.safetensors"
    ml.save_params(whole, params)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-5])
    with pytest.raises(FormatError, match="cut.safetensors"):
        ml.load_params(cut, ml.NumpyBackend())
    before = whole.read_bytes()
    with pytest.raises(TypeError, match=r"params\['bad'\]"):
        ml.save_params(whole, {"w": params["w"], "bad": np.array(["text"])})
    assert whole.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.safetensors",
        "model.json",
        "p.safetensors",
    ]
