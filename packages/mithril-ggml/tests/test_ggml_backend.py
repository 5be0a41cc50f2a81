"""GGML backend: conformance against NumPy, the quick start, quantization, gradients, GGUF, caching, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mithril as ml
import mithril_ggml
from mithril.testing import CASES, Case, check_case
from mithril.testing.models import quickstart_cnn, quickstart_mlp


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_primitive_matches_numpy_reference(case: Case) -> None:
    check_case(case, ml.GGMLBackend(), ml.NumpyBackend(dtype=ml.float64), grads=True)


def test_quickstart_mlp_matches_numpy_and_gradients_match() -> None:
    backend = ml.GGMLBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    reference = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=1)
    x, g = backend.randn(32, 20), backend.randn(32, 10)
    out = compiled.evaluate(params, {"input": x})["output"]
    want = reference.evaluate(params, {"input": x})["output"]
    assert out.shape == (32, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-6)
    (out2, grads), (_, want_grads) = (
        compiled.evaluate(params, {"input": x}, {"output": g}),
        reference.evaluate(params, {"input": x}, {"output": g}),
    )
    np.testing.assert_allclose(out2["output"], want, rtol=1e-4, atol=1e-6)
    assert set(grads) == set(want_grads)
    for key in want_grads:
        np.testing.assert_allclose(grads[key], want_grads[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_quickstart_training_loop_reduces_loss() -> None:
    backend = ml.GGMLBackend()
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=2)
    x, y = backend.randn(32, 20), backend.randn(32, 10)
    losses = []
    for _ in range(20):
        diff = compiled.evaluate(params, {"input": x})["output"] - y
        losses.append(float(backend.mean(diff * diff)))
        _, grads = compiled.evaluate(params, {"input": x}, {"output": 2 * diff / 32})
        params = {k: params[k] - 0.05 * grads[k] for k in params}
    assert losses[-1] < 0.8 * losses[0]


def test_quickstart_cnn_matches_numpy_in_inference() -> None:
    compiled = ml.compile(quickstart_cnn(), ml.GGMLBackend(), shapes={"input": [4, 3, 32, 32]}, static_inference=True)
    reference = ml.compile(quickstart_cnn(), ml.NumpyBackend(), shapes={"input": [4, 3, 32, 32]}, inference=True)
    params = compiled.randomize_params(seed=3)
    state = {k: np.abs(v) + 0.5 for k, v in reference.initial_state().items()}
    x = ml.GGMLBackend().randn(4, 3, 32, 32)
    out = compiled.apply(params, {"input": x}, state)[0]["output"]
    want = reference.apply(params, {"input": x}, state)[0]["output"]
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_quickstart_cnn_trains_with_batch_statistics() -> None:
    compiled = ml.compile(quickstart_cnn(), ml.GGMLBackend(), shapes={"input": [2, 3, 16, 16]})
    reference = ml.compile(quickstart_cnn(), ml.NumpyBackend(), shapes={"input": [2, 3, 16, 16]})
    params = compiled.randomize_params(seed=4)
    x, g = ml.GGMLBackend().randn(2, 3, 16, 16), ml.GGMLBackend().randn(2, 10)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g})
    want, want_grads = reference.evaluate(params, {"input": x}, {"output": g})
    np.testing.assert_allclose(out["output"], want["output"], rtol=1e-4, atol=1e-5)
    for key in want_grads:
        np.testing.assert_allclose(grads[key], want_grads[key], rtol=1e-3, atol=1e-4, err_msg=key)
    for key in reference.state:
        np.testing.assert_allclose(compiled.state[key], reference.state[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("mode", "limit"), [("float16", 0.002), ("int8", 0.01), ("int4", 0.06)])
def test_quantized_outputs_stay_close_to_float32(mode: str, limit: float) -> None:
    shapes = {"input": [8, 3, 16, 16]}
    base = ml.compile(quickstart_cnn(), ml.GGMLBackend(), shapes=shapes, static_inference=True)
    quantized = ml.compile(quickstart_cnn(), ml.GGMLBackend(quantize=mode), shapes=shapes, static_inference=True)
    params = base.randomize_params(seed=5)
    state = base.initial_state()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    cnn_err = relative_error(
        quantized.apply(params, {"input": x}, state)[0]["output"], base.apply(params, {"input": x}, state)[0]["output"]
    )
    mlp = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize=mode), shapes={"input": [32, 20]}, static_inference=True)
    mlp_base = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [32, 20]})
    mlp_params = mlp_base.randomize_params(seed=6)
    xm = rng.standard_normal((32, 20)).astype(np.float32)
    mlp_err = relative_error(
        mlp.evaluate(mlp_params, {"input": xm})["output"], mlp_base.evaluate(mlp_params, {"input": xm})["output"]
    )
    print(f"{mode}: relative error vs float32: MLP {mlp_err:.4f}, CNN {cnn_err:.4f}")
    assert mlp_err < limit and cnn_err < limit


def test_quantization_report_and_fallback() -> None:
    compiled = ml.compile(
        quickstart_cnn(), ml.GGMLBackend(quantize="int8"), shapes={"input": [1, 3, 32, 32]}, static_inference=True
    )
    report = mithril_ggml.quantization_report(compiled)
    assert report["linear_0.weight"] == "Q8_0" and report["linear_0.bias"] == "F32"
    assert report["linear_1.weight"] == "Q8_0"
    assert report["conv2d_0.weight"].startswith("F32 (the im2col convolution cannot read")
    mlp = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int4"), shapes={"input": [2, 20]})
    assert "not a multiple of 32" in mithril_ggml.quantization_report(mlp)["linear_0.weight"]
    assert mithril_ggml.quantization_report(mlp)["linear_1.weight"] == "Q4_0"
    f16 = ml.compile(quickstart_cnn(), ml.GGMLBackend(quantize="float16"), shapes={"input": [1, 3, 32, 32]})
    assert mithril_ggml.quantization_report(f16)["conv2d_0.weight"] == "F16"


def test_production_snippet_compiles_without_shapes_and_runs_any_batch() -> None:
    deploy = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int8"), inference=True)
    params = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [1, 20]}).randomize_params(seed=7)
    for batch in (1, 5):
        assert deploy.evaluate(params, {"input": np.ones((batch, 20), np.float32)})["output"].shape == (batch, 10)


def test_graph_cache_builds_once_per_shape_and_weights_once_per_params(monkeypatch: pytest.MonkeyPatch) -> None:
    from mithril_ggml import lowering, quant

    builds, converts = [], []
    real_instance, real_prepare = lowering._Instance.__init__, quant.prepare
    monkeypatch.setattr(lowering._Instance, "__init__", lambda self, *a: builds.append(a[2]) or real_instance(self, *a))
    monkeypatch.setattr(quant, "prepare", lambda *a: converts.append(1) or real_prepare(*a))
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int8"), inference=True)
    params = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [1, 20]}).randomize_params(seed=8)
    x = np.ones((4, 20), np.float32)
    first = compiled.evaluate(params, {"input": x})["output"]
    compiled.evaluate(params, {"input": x})
    assert builds == [((4, 20),)] and len(converts) == 4
    compiled.evaluate(params, {"input": np.ones((7, 20), np.float32)})
    assert builds == [((4, 20),), ((7, 20),)] and len(converts) == 4
    changed = {**params, "linear_1.bias": params["linear_1.bias"] + 1}
    np.testing.assert_allclose(compiled.evaluate(changed, {"input": x})["output"], first + 1, rtol=1e-5)
    assert len(builds) == 2 and len(converts) == 8


def test_static_shapes_build_the_graph_at_compile_time() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [3, 20]})
    (store,) = compiled.program._stores.values()
    assert list(store.instances) == [((3, 20),)]
    assert "def forward(params, inputs):" in compiled.program.source  # the inlined static forward


def test_static_forward_converts_weights_once_per_params(monkeypatch: pytest.MonkeyPatch) -> None:
    from mithril_ggml import quant

    converts = []
    real_prepare = quant.prepare
    monkeypatch.setattr(quant, "prepare", lambda *a: converts.append(1) or real_prepare(*a))
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [4, 20]})
    reference = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [4, 20]})
    first, second = compiled.randomize_params(seed=12), compiled.randomize_params(seed=13)
    x = {"input": np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32)}
    for params, total in ((first, 4), (first, 4), ({**first}, 4), (second, 8), (first, 8)):
        got = compiled.evaluate(params, x)["output"]
        assert relative_error(got, reference.evaluate(params, x)["output"]) < 1e-5 and len(converts) == total
    changed = {**first, "linear_1.bias": first["linear_1.bias"] + 1}
    np.testing.assert_allclose(compiled.evaluate(changed, x)["output"], got + 1, rtol=1e-5, atol=1e-5)
    assert len(converts) == 12


def test_ggml_buffers_are_freed_with_the_compiled_model_without_waiting_for_gc() -> None:
    import gc
    import weakref

    for shapes in ({"input": [4, 20]}, None):
        compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes=shapes)
        params = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [4, 20]}).randomize_params(seed=14)
        compiled.evaluate(params, {"input": np.ones((4, 20), np.float32)})
        (store,) = compiled.program._stores.values()
        alive = weakref.ref(store)
        gc.disable()
        try:
            del compiled, store
            assert alive() is None, shapes
        finally:
            gc.enable()


def test_gguf_round_trip_keeps_quantized_bytes(tmp_path: Path) -> None:
    for mode in ("int8", "int4", "float16", None):
        compiled = ml.compile(
            quickstart_cnn(), ml.GGMLBackend(quantize=mode), shapes={"input": [2, 3, 32, 32]}, static_inference=True
        )
        params = compiled.randomize_params(seed=9)
        state = compiled.initial_state()
        x = ml.GGMLBackend().randn(2, 3, 32, 32)
        want = compiled.apply(params, {"input": x}, state)[0]["output"]
        path = tmp_path / f"cnn_{mode}.gguf"
        mithril_ggml.save_gguf(compiled, params, path)
        loaded = mithril_ggml.load_gguf(path)
        assert set(loaded) == set(params) and all(loaded[k].shape == params[k].shape for k in params)
        assert loaded.quantize == mode
        np.testing.assert_array_equal(compiled.apply(loaded, {"input": x}, state)[0]["output"], want)
        if mode == "int8":
            assert loaded.stored["linear_0.weight"][2].dtype == np.uint8
        fresh = ml.compile(quickstart_cnn(), ml.GGMLBackend(), shapes={"input": [2, 3, 32, 32]}, static_inference=True)
        # float32 kernels on the dequantized weights differ only by ggml's 8-bit activations
        assert relative_error(fresh.apply(loaded, {"input": x}, state)[0]["output"], want) < 0.02


def test_argument_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"quantize must be one of \[None, 'float16', 'int8', 'int4'\]"):
        ml.GGMLBackend(quantize="int3")
    with pytest.raises(TypeError, match="dtype"):
        ml.GGMLBackend(dtype=ml.float64)
    with pytest.raises(ValueError, match="n_threads"):
        ml.GGMLBackend(n_threads=0)
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [4, 20]})
    params = compiled.randomize_params(seed=10)
    with pytest.raises(ml.ShapeError, match="input"):
        compiled.evaluate(params, {"input": np.ones((4, 21), np.float32)})
    with pytest.raises(ml.DTypeMismatchError, match="float32"):
        compiled.evaluate(params, {"input": np.ones((4, 20))})
    with pytest.raises(ml.KeyNotFoundError, match="linear_0.weight"):
        compiled.evaluate({k: v for k, v in params.items() if k != "linear_0.weight"}, {"input": np.ones((4, 20))})
    with pytest.raises(ml.ShapeError, match="output_gradients"):
        compiled.evaluate(params, {"input": np.ones((4, 20), np.float32)}, {"output": np.ones((4, 9), np.float32)})


def test_gradients_of_quantized_model_are_refused() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(quantize="int8"), shapes={"input": [2, 20]})
    params = compiled.randomize_params(seed=11)
    with pytest.raises(ml.UnsupportedError, match="quantize='int8'"):
        compiled.evaluate(params, {"input": np.ones((2, 20), np.float32)}, {"output": np.ones((2, 10), np.float32)})


def test_array_helpers_and_randomize_params() -> None:
    backend = ml.GGMLBackend()
    backend.set_seed(0)
    a = backend.randn(2, 3)
    backend.set_seed(0)
    assert np.array_equal(a, backend.randn(2, 3)) and a.dtype == np.float32
    assert backend.rand(4).min() >= 0 and backend.ones(2).sum() == 2 and backend.zeros(2, 2).shape == (2, 2)
    assert backend.array([1.0, 2.0]).dtype == np.float32
    assert backend.to_numpy(backend.matmul(backend.ones(2, 3), backend.ones(3, 1))).tolist() == [[3.0], [3.0]]
    assert backend.mean(backend.ones(2, 2)) == 1.0 and backend.sum(backend.ones(2, 2), axis=0).tolist() == [2, 2]
    params = ml.compile(quickstart_mlp(), backend, shapes={"input": [1, 20]}).randomize_params(seed=1)
    assert np.abs(params["linear_0.weight"]).max() <= 1 / np.sqrt(20)


RISKY = {
    "bad quantize": "ml.GGMLBackend(quantize='int2')",
    "unsupported op": (
        "from mithril.models.base import Operator\n"
        "pool = Operator('max_pool', attrs={'kernel_size': (2, 2, 2), 'stride': (1, 1, 1), 'padding': (0, 0, 0),"
        " 'dilation': (1, 1, 1)})\n"
        "ml.compile(pool, ml.GGMLBackend(), shapes={'input': [1, 3, 3, 3]})"
    ),
    "quantized gradients": (
        "c = ml.compile(mlp, ml.GGMLBackend(quantize='int4'), shapes={'input': [2, 64]})\n"
        "c.evaluate(c.randomize_params(), {'input': np.ones((2, 64), np.float32)}, "
        "{'output': np.ones((2, 10), np.float32)})"
    ),
    "sigmoid gradients": (
        "m = Model(); m |= Linear(4); m += Sigmoid(); m += Linear(2)\n"
        "c = ml.compile(m, ml.GGMLBackend(), shapes={'input': [3, 5]})\n"
        "p = c.randomize_params(); x = {'input': np.ones((3, 5), np.float32)}\n"
        "c.evaluate(p, x, {'output': np.ones((3, 2), np.float32)})\n"
        "raise ml.UnsupportedError('no error: gradients ran')"
    ),
    "rank 5": (
        "m = Model(); m |= Relu()\n"
        "c = ml.compile(m, ml.GGMLBackend())\n"
        "c.evaluate({}, {'input': np.ones((1, 2, 1, 2, 3), np.float32)})"
    ),
}


@pytest.mark.parametrize("name", list(RISKY))
def test_risky_calls_raise_and_the_process_survives(name: str) -> None:
    script = textwrap.dedent(
        """
        import numpy as np
        import mithril as ml
        from mithril.models import Linear, Model, Relu, Sigmoid
        mlp = Model(); mlp |= Linear(64); mlp += Relu(); mlp += Linear(10)
        try:
        {body}
        except (ml.MithrilError, ValueError, TypeError) as exc:
            print("RAISED", type(exc).__name__, exc)
        print("ALIVE")
        """
    ).format(body=textwrap.indent(RISKY[name], "    "))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"GGML_NO_BACKTRACE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ALIVE" in proc.stdout
    if name == "sigmoid gradients":
        assert "no error: gradients ran" in proc.stdout
    else:
        assert "RAISED" in proc.stdout, proc.stdout


@pytest.mark.parametrize("shape", [(32, 20), (20,), (2, 5, 20), (1, 20)])
def test_out_prod_linear_matches_numpy_and_follows_new_params(shape: tuple[int, ...]) -> None:
    """Float32 layers that ggml_out_prod computes faster (20 -> 64) match NumPy, forward and backward."""
    import ctypes

    import ggml.ggml as G

    from mithril_ggml.ops import prefers_out_prod

    assert prefers_out_prod(64, 20) and not prefers_out_prod(10, 64)
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": list(shape)})
    reference = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": list(shape)})
    x = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for seed in (1, 2):  # a new params object must refresh the transposed copy
        params = compiled.randomize_params(seed=seed)
        got, want = compiled.evaluate(params, x)["output"], reference.evaluate(params, x)["output"]
        assert got.shape == want.shape and relative_error(got, want) < 1e-5
        g = {"output": np.ones(want.shape, np.float32)}
        (out, grads), (ref_out, ref_grads) = compiled.evaluate(params, x, g), reference.evaluate(params, x, g)
        assert relative_error(out["output"], ref_out["output"]) < 1e-5
        for key in ref_grads:
            assert relative_error(grads[key], ref_grads[key]) < 1e-5, key
        assert relative_error(compiled.evaluate(params, x)["output"], want) < 1e-5
    store = next(iter(compiled.program._stores.values()))
    assert len(store.transposed) == 1  # only the 20 -> 64 weight
    wt = ctypes.addressof(next(iter(store.transposed.values())).contents)
    readers = {False: 0, True: 0}  # graphs reading W^T: forward-only yes, gradient graphs never
    for inst in store.instances.values():
        for i in range(G.ggml_graph_n_nodes(inst.graph)):
            srcs = G.ggml_graph_node(inst.graph, i).contents.src
            readers[inst.joint] += any(src and ctypes.addressof(src.contents) == wt for src in srcs)
    assert readers[False] > 0 and readers[True] == 0


def test_static_inference_generates_one_forward_equal_to_the_dynamic_path_and_options_are_checked() -> None:
    """(What static_inference must do on every backend is checked by the conformance kit.)"""
    backend = ml.GGMLBackend()
    static = ml.compile(quickstart_mlp(), backend, shapes={"input": [3, 20]}, static_inference=True)
    normal = ml.compile(quickstart_mlp(), backend)  # shapes fixed at the first call: ggml's dynamic path
    params, x = static.randomize_params(seed=0), {"input": backend.randn(3, 20)}
    np.testing.assert_array_equal(static.evaluate(params, x)["output"], normal.evaluate(params, x)["output"])
    assert "def forward" in static.code and "def forward" not in normal.code  # the static forward was generated
    with pytest.raises(TypeError, match=r"option 'inference' must be bool, got None \(NoneType\)"):
        ml.compile(quickstart_mlp(), backend, inference=None)
