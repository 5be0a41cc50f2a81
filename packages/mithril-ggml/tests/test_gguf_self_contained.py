"""GGUF files are self-contained: state, architecture and general.* metadata, read back by gguf's own reader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import mithril as ml
import mithril_ggml
from mithril.testing.models import quickstart_cnn1d


@pytest.mark.parametrize(("quantize", "file_type"), [(None, 0), ("float16", 1), ("int8", 7)])
def test_a_cnn_round_trips_from_the_file_alone(quantize: str | None, file_type: int, tmp_path: Path) -> None:
    backend = ml.GGMLBackend() if quantize is None else ml.GGMLBackend(quantize=quantize)
    model = quickstart_cnn1d()
    compiled = ml.compile(model, backend, {"input": [4, 4, 8]})
    params = compiled.randomize_params(seed=0)
    compiled.evaluate(params, {"input": backend.randn(4, 4, 8)})  # moves the running statistics
    assert compiled.state is not None
    path = tmp_path / "cnn.gguf"
    mithril_ggml.save_gguf(compiled, params, path)

    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.name").contents() == "Model"
    assert reader.get_field("general.file_type").contents() == file_type
    assert reader.get_field("general.quantization_version").contents() == gguf.GGML_QUANT_VERSION
    assert reader.get_field("general.alignment").contents() == gguf.GGUF_DEFAULT_ALIGNMENT

    loaded = mithril_ggml.load_gguf(path)  # no model object needed
    assert loaded.model is not None and loaded.model.shapes == model.shapes
    assert set(loaded.state) == set(compiled.state_keys)
    for key, value in compiled.state.items():
        np.testing.assert_array_equal(loaded.state[key], np.asarray(value))
    again = ml.compile(loaded.model, backend, {"input": [4, 4, 8]}, inference=True)
    reference = ml.compile(model, backend, {"input": [4, 4, 8]}, inference=True)
    x = {"input": backend.randn(4, 4, 8)}
    expected = reference.apply(params, x, compiled.state)[0]["output"]
    got = again.apply(loaded, x, loaded.state)[0]["output"]
    if quantize is None:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_array_equal(got, again.apply(loaded, x, loaded.state)[0]["output"])
        np.testing.assert_allclose(got, expected, rtol=0.1, atol=0.1)
