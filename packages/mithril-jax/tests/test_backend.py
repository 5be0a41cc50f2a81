"""JaxBackend: construction, array helpers, dtypes, argument errors, jit behaviour, options."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mithril as ml
from mithril.errors import IndexRangeError
from mithril.models import Embedding, Linear, Model, Relu, Sum
from mithril.testing.models import quickstart_mlp


# -- construction ---------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:1", "tpu", "tpu:0"])
def test_missing_platform_is_named_with_the_present_ones(device: str) -> None:
    with pytest.raises(RuntimeError, match=rf"device {device!r} is not available.*platforms present: \['cpu'\]"):
        ml.JaxBackend(device=device)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"device": "npu"}, ValueError, "unknown device 'npu'"),
        ({"device": "cpu:9"}, ValueError, r"'cpu:9' does not exist; 1 cpu device\(s\) present"),
        ({"device_mesh": (8,)}, ValueError, r"needs 8 cpu devices but 1 is present.*device_count=8"),
        ({"device_mesh": (0,)}, ValueError, "positive ints"),
        ({"dtype": ml.int32}, TypeError, "not supported"),
        ({"quantize": "int8"}, TypeError, r"unknown option\(s\) \['quantize'\]; valid options are"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        ml.JaxBackend(**kwargs)


def test_cpu_device_and_index() -> None:
    backend = ml.JaxBackend(device="cpu:0")
    assert backend.jax_device == jax.devices("cpu")[0]
    assert backend.randn(2, 3).devices() == {backend.jax_device}


def test_loading_the_plugin_does_not_import_jax() -> None:
    code = (
        "import sys, mithril as ml; infos = ml.available_backends(); "
        "assert infos['jax'].error is None, infos['jax']; import mithril_jax; "
        "assert 'jax' not in sys.modules, 'jax imported'; ml.JaxBackend; assert 'jax' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# -- array helpers ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [ml.float16, ml.bfloat16, ml.float32, ml.float64])
def test_helpers_take_the_backend_dtype(dtype: ml.DType) -> None:
    backend = ml.JaxBackend(dtype=dtype)
    native = backend.native_dtype(dtype)
    for value in [
        backend.randn(3, 2),
        backend.rand(3, 2),
        backend.ones(3, 2),
        backend.zeros(3, 2),
        backend.array([[1.0, 2.0]]),
        backend.array(np.ones(2, np.float64)),
    ]:
        assert value.dtype == native
        assert backend.dtype_of(value) is dtype
    assert backend.array([1, 2]).dtype.kind == "i"
    assert backend.array([1, 2], dtype=dtype).dtype == native


def test_float32_arrays_stay_float32_when_a_float64_backend_exists() -> None:
    ml.JaxBackend(dtype=ml.float64)
    assert jax.config.read("jax_enable_x64")
    b32 = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_mlp(), b32, shapes={"input": [4, 20]})
    params = compiled.randomize_params()
    out = compiled.evaluate(params, {"input": b32.array(np.ones((4, 20)))})["output"]
    assert out.dtype == np.float32 and all(v.dtype == np.float32 for v in params.values())
    assert (b32.randn(2) * 2.0).dtype == np.float32


def test_seeded_random_streams_repeat_and_advance() -> None:
    backend = ml.JaxBackend()
    backend.set_seed(3)
    a, b = backend.randn(4), backend.randn(4)
    backend.set_seed(3)
    np.testing.assert_array_equal(backend.to_numpy(backend.randn(4)), backend.to_numpy(a))
    assert not np.array_equal(backend.to_numpy(a), backend.to_numpy(b))
    u = backend.to_numpy(backend.rand(1000))
    assert 0.0 <= u.min() and u.max() < 1.0


def test_dlpack_array_is_zero_copy_when_dtype_matches() -> None:
    torch = pytest.importorskip("torch", reason="torch provides the dlpack arrays of this test")
    backend = ml.JaxBackend()
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    arr = backend.array(tensor)
    np.testing.assert_array_equal(np.asarray(arr), tensor.numpy())
    assert arr.unsafe_buffer_pointer() == tensor.data_ptr()
    assert backend.array(tensor.double()).dtype == np.float32


def test_numeric_helpers_follow_numpy() -> None:
    backend = ml.JaxBackend()
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    a = backend.array(x)
    checks = [
        (backend.mean(a, axis=1, keepdim=True), np.mean(x, axis=1, keepdims=True)),
        (backend.sum(a, axis=0), np.sum(x, axis=0)),
        (backend.matmul(a, a.T), x @ x.T),
        (backend.exp(a), np.exp(x)),
        (backend.log(a), np.log(x)),
        (backend.sqrt(a), np.sqrt(x)),
        (backend.abs(-a), x),
        (backend.max(a, axis=1), x.max(1)),
        (backend.argmax(a, axis=1), x.argmax(1)),
        (backend.reshape(a, (3, 2)), x.reshape(3, 2)),
        (backend.transpose(a), x.T),
        (backend.concat([a, a], axis=0), np.concatenate([x, x])),
    ]
    for got, want in checks:
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6)


# -- compiled models ------------------------------------------------------------------------
@pytest.fixture
def compiled() -> Any:
    backend = ml.JaxBackend()
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    params = model.randomize_params(seed=0)
    return model, backend, params, {"input": backend.randn(32, 20)}


def test_jit_is_the_default_and_gradients_are_keyed_like_params(compiled: Any) -> None:
    model, backend, params, inputs = compiled
    assert model.options.jit
    reordered = dict(reversed(list(params.items())))
    out, grads = model.evaluate(reordered, inputs, {"output": backend.ones(32, 10)})
    assert list(grads) == list(reordered)
    expected = jax.grad(lambda p: jnp.sum(model.evaluate(p, inputs)["output"]))(params)
    for key in params:
        np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(expected[key]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        (lambda p, i: (p, {"input": i["input"][:31]}), ml.ShapeError, r"expected shape \[32, 20\], got \[31, 20\]"),
        (lambda p, i: (p, {"inputs": i["input"]}), ml.KeyNotFoundError, r"missing key 'input' \(did you mean 'inputs'"),
        (lambda p, i: ({**p, "input": i["input"]}, i), ml.KeyNotFoundError, "'input' belongs in inputs"),
        (lambda p, i: (p, {"input": "text"}), TypeError, r"\['input'\]: expected an array of backend 'jax', got str"),
        (lambda p, i: (p, {"input": [[1.0] * 20] * 32}), TypeError, "got list"),
        (lambda p, i: (p, {"input": i["input"].astype(jnp.bfloat16)}), ml.DTypeMismatchError, "float32.*got bfloat16"),
        (lambda p, i: ({k: p[k] for k in list(p)[:3]}, i), ml.KeyNotFoundError, "missing key 'linear_1.bias'"),
        (lambda p, i: (p, None), ml.KeyNotFoundError, "missing key 'input'"),
    ],
)
@pytest.mark.parametrize("jit", [True, False])
def test_bad_arguments_give_core_errors_and_the_model_stays_usable(
    change: Any, error: type[Exception], pattern: str, jit: bool
) -> None:
    backend = ml.JaxBackend()
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]}, jit=jit)
    params = model.randomize_params(seed=0)
    inputs = {"input": backend.randn(32, 20)}
    good = model.evaluate(params, inputs)["output"]
    bad_params, bad_inputs = change(params, inputs)
    with pytest.raises(error, match=pattern):
        model.evaluate(bad_params, bad_inputs)
    with pytest.raises(error, match=pattern):
        model.evaluate(bad_params, bad_inputs, {"output": backend.ones(32, 10)})
    np.testing.assert_array_equal(np.asarray(model.evaluate(params, inputs)["output"]), np.asarray(good))


@pytest.mark.parametrize(
    ("grads", "error", "pattern"),
    [
        ({"output": np.ones((3, 10), np.float32)}, ml.ShapeError, r"expected shape \[32, 10\].*got \[3, 10\]"),
        ({"outptu": np.ones((32, 10), np.float32)}, ml.KeyNotFoundError, "unknown key 'outptu'"),
        ({}, ml.KeyNotFoundError, "non-empty dict"),
        (
            {"output": "x"},
            TypeError,
            r"output_gradients\['output'\]: expected an array of backend 'jax' like output 'output', got str "
            r"\(pass a jax.Array or numpy.ndarray",
        ),
        ({"output": np.ones((32, 10), jnp.bfloat16)}, ml.DTypeMismatchError, "expected dtype float32.*got bfloat16"),
    ],
)
def test_bad_output_gradients(compiled: Any, grads: dict[str, Any], error: type[Exception], pattern: str) -> None:
    model, _, params, inputs = compiled
    with pytest.raises(error, match=pattern):
        model.evaluate(params, inputs, grads)


def test_gradients_for_a_subset_of_outputs() -> None:
    model = Model()
    model |= Linear(8)(input="input", output="hidden")
    model += Relu()(input="hidden", output="act")
    model += Sum(axis=1)(input="act", output="output")
    shapes = {"input": [4, 3]}
    jb, nb = ml.JaxBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    cj = ml.compile(model, jb, shapes=shapes, outputs=["output", "hidden"])
    cn = ml.compile(model, nb, shapes=shapes, outputs=["output", "hidden"])
    params = cn.randomize_params(seed=2)
    x = np.random.default_rng(0).standard_normal((4, 3))
    pj = {k: jb.array(v) for k, v in params.items()}
    hidden, output = np.ones((4, 8)), np.arange(4.0)
    subsets = [{"hidden": hidden}, {"output": output}, {"hidden": hidden, "output": output}]
    for subset in subsets:
        out_j, g_j = cj.evaluate(pj, {"input": jb.array(x)}, {k: jb.array(v) for k, v in subset.items()})
        out_n, g_n = cn.evaluate(params, {"input": x}, subset)
        assert list(out_j) == list(out_n) == cj.output_keys
        for key in g_n:
            np.testing.assert_allclose(np.asarray(g_j[key]), g_n[key], rtol=1e-10)


def test_repeated_calls_never_retrace(counting_relu: list[int]) -> None:
    backend = ml.JaxBackend()
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    params = model.randomize_params(seed=1)
    grads = {"output": backend.ones(32, 10)}
    for _ in range(5):
        model.evaluate(params, {"input": backend.randn(32, 20)})
        model.evaluate(params, {"input": backend.randn(32, 20)}, grads)
    assert counting_relu[0] == 2  # one trace for forward, one for forward_backward


def test_calls_off_the_fast_path_agree_and_share_its_trace(counting_relu: list[int]) -> None:
    """Keys in another order, or gradients given out of graph order, reach the same jitted function."""
    model = Model()
    model |= Linear(8)(input="input", output="hidden")
    model += Relu()(input="hidden", output="act")
    model += Sum(axis=1)(input="act", output="output")
    backend = ml.JaxBackend(dtype=ml.float64)
    compiled = ml.compile(model, backend, shapes={"input": [4, 3]}, outputs=["output", "hidden"])
    params = compiled.randomize_params(seed=0)
    inputs = {"input": backend.randn(4, 3)}
    grads_in = {"output": backend.randn(4), "hidden": backend.randn(4, 8)}
    want_out, want_grads = compiled.evaluate(params, inputs, grads_in)
    assert list(want_out) == compiled.output_keys and list(want_grads) == list(params)
    reordered = dict(reversed(list(params.items())))
    for p, g in [(reordered, grads_in), (params, dict(reversed(list(grads_in.items())))), (reordered, grads_in)]:
        out, grads = compiled.evaluate(p, inputs, g)
        assert list(out) == compiled.output_keys and list(grads) == list(p)
        for key in want_out:
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(want_out[key]))
        for key in want_grads:
            np.testing.assert_array_equal(np.asarray(grads[key]), np.asarray(want_grads[key]))
    out = compiled.evaluate(reordered, inputs)
    np.testing.assert_array_equal(np.asarray(out["output"]), np.asarray(want_out["output"]))
    assert counting_relu[0] == 2  # forward_backward and forward, once each


def test_wrong_keys_of_the_right_count_are_named(compiled: Any) -> None:
    model, backend, params, inputs = compiled
    renamed = {("linear_0.w" if k == "linear_0.weight" else k): v for k, v in params.items()}
    for grads in (None, {"output": backend.ones(32, 10)}):
        with pytest.raises(ml.KeyNotFoundError, match=r"missing key 'linear_0.weight' \(did you mean 'linear_0.w'"):
            model.evaluate(renamed, inputs, grads)
        with pytest.raises(ml.KeyNotFoundError, match="missing key 'input'"):
            model.evaluate(params, {"x": inputs["input"]}, grads)
    with pytest.raises(TypeError, match="params must be a dict"):
        model.evaluate(list(params.values()), inputs, {"output": backend.ones(32, 10)})


def test_numpy_arrays_are_accepted_like_jax_arrays(compiled: Any) -> None:
    model, backend, params, inputs = compiled
    as_numpy = {k: np.asarray(v) for k, v in params.items()}
    x, g = {"input": np.asarray(inputs["input"])}, {"output": np.ones((32, 10), np.float32)}
    want_out, want_grads = model.evaluate(params, inputs, {"output": backend.ones(32, 10)})
    out, grads = model.evaluate(as_numpy, x, g)
    np.testing.assert_allclose(np.asarray(out["output"]), np.asarray(want_out["output"]), rtol=1e-6)
    for key in params:
        np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(want_grads[key]), rtol=1e-6)


def test_symbolic_batch_runs_for_any_batch_size() -> None:
    backend = ml.JaxBackend()
    sized = ml.compile(quickstart_mlp(), backend, shapes={"input": [2, 20]})
    params = sized.randomize_params(seed=0)
    free = ml.compile(quickstart_mlp(), backend)
    for batch in (1, 7):
        assert free.evaluate(params, {"input": backend.randn(batch, 20)})["output"].shape == (batch, 10)


def test_inference_only_and_file_path(tmp_path: Any) -> None:
    backend = ml.JaxBackend()
    path = tmp_path / "mlp.py"
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [2, 20]}, inference=True, file_path=str(path))
    assert "_relu(" in path.read_text() and "forward_backward" not in model.code
    params = model.randomize_params(seed=0)
    with pytest.raises(ml.UnsupportedError, match="inference only"):
        model.evaluate(params, {"input": backend.randn(2, 20)}, {"output": backend.ones(2, 10)})


def test_compile_options_are_checked() -> None:
    backend = ml.JaxBackend()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['donate'\] for backend 'jax'; valid options are \['sh"):
        ml.compile(quickstart_mlp(), backend, donate=True)
    with pytest.raises(ValueError, match="shardings= needs a backend with a device mesh"):
        ml.compile(quickstart_mlp(), backend, shardings={"linear_0.weight": (None, None)})


@pytest.mark.parametrize("dtype", [ml.float16, ml.bfloat16])
def test_half_precision_models_run(dtype: ml.DType) -> None:
    backend = ml.JaxBackend(dtype=dtype)
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]})
    params = model.randomize_params(seed=0)
    out, grads = model.evaluate(params, {"input": backend.randn(4, 20)}, {"output": backend.ones(4, 10)})
    assert out["output"].dtype == backend.native_dtype(dtype)
    assert all(g.dtype == backend.native_dtype(dtype) for g in grads.values())


def test_compile_option_types_are_checked() -> None:
    """(static_inference itself is checked on every backend by the conformance kit.)"""
    backend = ml.JaxBackend()
    with pytest.raises(TypeError, match=r"option 'shardings' must be Mapping\[str, Any\] \| None, got 3 \(int\)"):
        ml.compile(quickstart_mlp(), backend, shardings=3)


@pytest.mark.parametrize("jit", [True, False])
def test_index_ranges_are_checked_before_the_traced_call(jit: bool) -> None:
    """Index checks read values, which jit's tracers lack: they run on every path before the jitted call."""
    backend = ml.JaxBackend(dtype=ml.float64)
    model = Model()
    model |= Embedding(7, 3)(input="tokens", output="hidden")
    model += Linear(2)(input="hidden", output="output")
    compiled = ml.compile(model, backend, shapes={"tokens": [2, 5]}, jit=jit)
    params = compiled.randomize_params(seed=0)
    reordered = dict(reversed(list(params.items())))
    good = {"tokens": backend.array(np.arange(10).reshape(2, 5) % 7, dtype=ml.int32)}
    bad = {"tokens": backend.array(np.full((2, 5), 9), dtype=ml.int32)}
    g = {"output": backend.ones(2, 5, 2)}
    assert compiled.evaluate(params, good, g)[1].keys() == params.keys()
    for call in (
        lambda x: compiled.evaluate(params, x),
        lambda x: compiled.evaluate(params, x, g),
        lambda x: compiled.evaluate(reordered, x, g),
    ):
        call(good)
        with pytest.raises(IndexRangeError, match=r"inputs\['tokens'\] holds index 9, outside the valid range"):
            call(bad)
