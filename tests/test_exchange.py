"""Parameters saved on one backend load on every other, float16 and bfloat16 included (safetensors)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import mithril as ml
from mithril.testing.models import quickstart_cnn1d

BACKENDS = {"numpy": "mithril_numpy", "torch": "mithril_torch", "jax": "mithril_jax", "ggml": "mithril_ggml"}
DTYPES = {"numpy": ("float32", "float16"), "torch": ("float32", "float16", "bfloat16"),
          "jax": ("float32", "float16", "bfloat16"), "ggml": ("float32",)}  # fmt: skip


def backend_or_skip(name: str, dtype: str) -> ml.Backend:
    if importlib.util.find_spec(BACKENDS[name]) is None:
        pytest.skip(f"the {name} backend ({BACKENDS[name]}) is not installed")
    try:
        return ml.backend(name, dtype=dtype)
    except ml.BackendNotFoundError as exc:
        pytest.skip(f"the {name} backend cannot be used here: {exc}")


PAIRS = [(src, dst, dtype) for src in BACKENDS for dst in BACKENDS for dtype in DTYPES[src] if dtype in DTYPES[dst]]


@pytest.mark.parametrize(("source", "target", "dtype"), PAIRS)
def test_save_on_one_backend_load_on_another(source: str, target: str, dtype: str, tmp_path: Path) -> None:
    saving, loading = backend_or_skip(source, dtype), backend_or_skip(target, dtype)
    shapes = {"input": [2, 4, 8]}
    first = ml.compile(quickstart_cnn1d(), saving, shapes)
    params = first.randomize_params(seed=0)
    state = {k: v + 0.5 for k, v in first.initial_state().items()}
    path = tmp_path / f"{source}.safetensors"
    ml.save_params(path, params, state=state)
    assert ml.serialization.read_metadata(path)["dtype"] == dtype
    second = ml.compile(quickstart_cnn1d(), loading, shapes, inference=True)
    loaded = ml.load_params(path, loading, compiled=second)
    loaded_state = ml.load_state(path, loading, compiled=second)
    for key, value in params.items():
        assert loading.dtype_of(loaded[key]) is loading.dtype
        np.testing.assert_array_equal(_f32(loading.to_numpy(loaded[key])), _f32(saving.to_numpy(value)))
    for key, value in state.items():
        np.testing.assert_array_equal(_f32(loading.to_numpy(loaded_state[key])), _f32(saving.to_numpy(value)))
    x = np.random.default_rng(0).standard_normal((2, 4, 8))
    reference = ml.compile(quickstart_cnn1d(), saving, shapes, inference=True)
    expected = saving.to_numpy(reference.apply(params, {"input": saving.array(x)}, state)[0]["output"])
    got = loading.to_numpy(second.apply(loaded, {"input": loading.array(x)}, loaded_state)[0]["output"])
    tolerance = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1e-1}[dtype]
    np.testing.assert_allclose(_f32(got), _f32(expected), rtol=tolerance, atol=tolerance)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float32)
