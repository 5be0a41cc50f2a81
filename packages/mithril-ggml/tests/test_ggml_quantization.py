"""Quantized weights: the block codec, sum-keeping rounding, GPTQ and calibration."""

from __future__ import annotations

from pathlib import Path

import ggml.ggml as G
import gguf
import numpy as np
import pytest

import mithril as ml
import mithril_ggml
from mithril.testing.models import quickstart_cnn, quickstart_mlp
from mithril_ggml import quant

KINDS = {"int8": G.GGML_TYPE_Q8_0, "int4": G.GGML_TYPE_Q4_0}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def dequantize(raw: np.ndarray, kind: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode with the gguf package, independently of our own codec."""
    return gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType(kind)).reshape(shape)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_blocks_decode_to_the_weights_they_were_rounded_to(mode: str) -> None:
    kind = KINDS[mode]
    w = np.random.default_rng(0).uniform(-0.3, 0.3, (16, 96)).astype(np.float32)
    raw = quant.prepare(w, kind)
    got = dequantize(raw, kind, w.shape)
    scales = np.abs(got.reshape(-1, 32)).max(axis=1) / (127 if mode == "int8" else 8)
    # Every weight lands within 1.5 levels of where it was (a kept-sum flip moves one level).
    assert np.all(np.abs(got - w).reshape(-1, 32) <= 1.5 * scales[:, None] + 1e-6)
    assert relative_error(got, w) < (0.01 if mode == "int8" else 0.08)
    scales_, levels = quant._decode(raw, kind)
    assert np.array_equal(quant._encode(scales_, levels, kind).reshape(raw.shape), raw)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_rounding_keeps_each_block_sum_within_half_a_level(mode: str) -> None:
    kind = KINDS[mode]
    w = np.random.default_rng(1).uniform(-1, 1, (64, 128)).astype(np.float32)
    plain_scales, plain_levels = quant._decode(quant._ggml_quantize(w, kind), kind)
    kept = dequantize(quant.prepare(w, kind), kind, w.shape).reshape(-1, 32)
    plain = plain_scales[:, None] * plain_levels
    blocks = w.reshape(-1, 32)
    half = np.abs(plain_scales) / 2 + 1e-6
    assert np.all(np.abs(kept.sum(1) - blocks.sum(1)) <= half)
    assert np.mean(np.abs(plain.sum(1) - blocks.sum(1)) > half) > 0.2  # plain rounding drifts
    # A positive-mean input (as after ReLU) sees much less output error ...
    x = np.abs(np.random.default_rng(2).standard_normal((256, 128))).astype(np.float32)
    kept_err = relative_error(x @ kept.reshape(w.shape).T, x @ w.T)
    plain_err = relative_error(x @ plain.reshape(w.shape).T, x @ w.T)
    assert kept_err < 0.8 * plain_err
    # ... and the weights themselves barely more.
    assert relative_error(kept.reshape(w.shape), w) < 1.05 * relative_error(plain.reshape(w.shape), w)


def test_gptq_minimises_output_error_on_the_calibration_inputs() -> None:
    rng = np.random.default_rng(3)
    w = rng.uniform(-1, 1, (48, 64)).astype(np.float32)
    mixing = rng.standard_normal((64, 64)) * 0.3 + np.eye(64)
    x = (rng.standard_normal((512, 64)) @ mixing).astype(np.float32)  # correlated inputs
    x_test = (rng.standard_normal((256, 64)) @ mixing).astype(np.float32)
    kind = KINDS["int4"]
    rounded = dequantize(quant.prepare(w, kind), kind, w.shape)
    tuned = dequantize(quant.prepare(w, kind, x.T.astype(np.float64) @ x), kind, w.shape)
    tuned_err = relative_error(x_test @ tuned.T, x_test @ w.T)
    assert tuned_err < 0.85 * relative_error(x_test @ rounded.T, x_test @ w.T)


def test_gptq_survives_inputs_that_are_always_zero() -> None:
    x = np.random.default_rng(4).standard_normal((100, 64))
    x[:, :5] = 0.0
    w = np.random.default_rng(5).uniform(-1, 1, (8, 64)).astype(np.float32)
    tuned = dequantize(quant.prepare(w, KINDS["int4"], x.T @ x), KINDS["int4"], w.shape)
    assert np.all(np.isfinite(tuned)) and relative_error(x @ tuned.T, x @ w.T) < 0.1


def _quick_start_errors(mode: str, calibrate: bool, seed: int) -> tuple[float, float]:
    """Relative output error vs float32 of the quick start MLP and CNN, on held-out inputs."""
    rng = np.random.default_rng(seed)
    mlp_shapes, cnn_shapes = {"input": [32, 20]}, {"input": [8, 3, 16, 16]}
    errors = []
    for build, shapes in ((quickstart_mlp, mlp_shapes), (quickstart_cnn, cnn_shapes)):
        base = ml.compile(build(), ml.GGMLBackend(), shapes=shapes, static_inference=True)
        quantized = ml.compile(build(), ml.GGMLBackend(quantize=mode), shapes=shapes, static_inference=True)
        params = base.randomize_params(seed=seed)
        if calibrate:
            size = shapes["input"]
            batches = [{"input": rng.standard_normal(size).astype(np.float32)} for _ in range(512 // size[0])]
            rows = mithril_ggml.calibrate(quantized, params, batches)
            assert rows and set(rows.values()) == {512}
        x = {"input": rng.standard_normal(shapes["input"]).astype(np.float32)}
        errors.append(relative_error(quantized.evaluate(params, x)["output"], base.evaluate(params, x)["output"]))
    return errors[0], errors[1]


@pytest.mark.parametrize(("mode", "limit"), [("int8", 0.01), ("int4", 0.05)])
def test_calibrated_quick_start_models_meet_the_error_targets(mode: str, limit: float) -> None:
    for seed in range(3):
        mlp_err, cnn_err = _quick_start_errors(mode, calibrate=True, seed=seed)
        print(f"calibrated {mode}, seed {seed}: MLP {mlp_err:.4f}, CNN {cnn_err:.4f}")
        assert mlp_err < limit and cnn_err < limit


def test_calibration_lowers_int4_error() -> None:
    plain = np.array([_quick_start_errors("int4", calibrate=False, seed=s) for s in range(3)])
    tuned = np.array([_quick_start_errors("int4", calibrate=True, seed=s) for s in range(3)])
    assert np.all(tuned.mean(axis=0) < 0.85 * plain.mean(axis=0))


def test_calibrate_requantizes_and_exports_the_tuned_weights(tmp_path: Path) -> None:
    shapes = {"input": [32, 64]}
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int4"), shapes=shapes, static_inference=True)
    params = compiled.randomize_params(seed=7)
    x = {"input": np.abs(ml.GGMLBackend().randn(32, 64))}
    before = compiled.evaluate(params, x)["output"]
    mithril_ggml.calibrate(compiled, params, x)
    after = compiled.evaluate(params, x)["output"]
    assert not np.array_equal(before, after)  # the same params object is re-quantized
    mithril_ggml.save_gguf(compiled, params, tmp_path / "tuned.gguf")
    loaded = mithril_ggml.load_gguf(tmp_path / "tuned.gguf")
    fresh = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int4"), shapes=shapes, static_inference=True)
    np.testing.assert_array_equal(fresh.evaluate(loaded, x)["output"], after)


def test_calibrate_reads_the_models_state() -> None:
    shapes = {"input": [4, 3, 16, 16]}
    compiled = ml.compile(quickstart_cnn(), ml.GGMLBackend(quantize="int8"), shapes=shapes, static_inference=True)
    params = compiled.randomize_params(seed=8)
    batch = {"input": ml.GGMLBackend().randn(4, 3, 16, 16)}
    assert mithril_ggml.calibrate(compiled, params, [batch, batch]) == {"linear_0.weight": 8, "linear_1.weight": 8}
    report = mithril_ggml.quantization_report(compiled)
    assert report["linear_0.weight"] == "Q8_0 (GPTQ on 8 calibration rows)" and report["linear_0.bias"] == "F32"
    assert report["conv2d_0.weight"].startswith("F32 (the im2col convolution cannot read")
    state = {k: np.abs(v) + 1 for k, v in compiled.initial_state().items()}
    assert mithril_ggml.calibrate(compiled, params, batch, state) == {"linear_0.weight": 4, "linear_1.weight": 4}


def test_calibrate_rejects_bad_calls_before_any_work() -> None:
    mlp = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int4"), shapes={"input": [32, 64]})
    params = mlp.randomize_params(seed=9)
    x = {"input": ml.GGMLBackend().randn(32, 64)}
    with pytest.raises(ml.KeyNotFoundError, match="'inputs'|input"):
        mithril_ggml.calibrate(mlp, params, {"inputs": x["input"]})
    with pytest.raises(ml.ShapeError, match="input"):
        mithril_ggml.calibrate(mlp, params, {"input": ml.GGMLBackend().randn(32, 65)})
    with pytest.raises(TypeError, match="non-empty iterable"):
        mithril_ggml.calibrate(mlp, params, [])
    assert mlp.program.calibration == {}
    plain = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [32, 64]})
    with pytest.raises(ValueError, match=r"quantize=None.*'int8' or 'int4'"):
        mithril_ggml.calibrate(plain, params, x)
    numpy_model = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [32, 64]})
    with pytest.raises(TypeError, match="calibrate needs a model compiled for the GGML backend"):
        mithril_ggml.calibrate(numpy_model, params, x)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantizing_in_chunks_of_rows_gives_the_same_bytes(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare rounds a large weight a few rows at a time (bounded temporaries); blocks are row-local, so the
    bytes equal those of one pass over the whole matrix."""
    matrix = np.random.default_rng(6).standard_normal((37, 96)).astype(np.float32)
    ggml_type = quant.QUANTIZE_MODES[kind]
    monkeypatch.setattr(quant, "_CHUNK_WEIGHTS", 1 << 30)
    whole = quant.prepare(matrix, ggml_type)
    monkeypatch.setattr(quant, "_CHUNK_WEIGHTS", 5 * 96)  # 5 rows a chunk, the last one shorter
    np.testing.assert_array_equal(quant.prepare(matrix, ggml_type), whole)
