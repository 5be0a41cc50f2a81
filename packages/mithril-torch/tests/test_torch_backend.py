"""The backend object: options, devices, dtypes, array helpers, input checks, gradients, jit, plugin loading."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_devices import DEVICES

import mithril as ml
from mithril.models import Linear, Model, Relu
from mithril.primitives import CORE_SET, PRIMITIVES, get
from mithril_torch.ops import OPS as TORCH_OPS


def mlp() -> Model:
    model = Model()
    model |= Linear(dimension=8)
    model += Relu()
    model += Linear(dimension=3)
    return model


def test_entry_point_does_not_import_torch() -> None:
    code = (
        "import sys, mithril, mithril_torch; info = mithril.available_backends()['torch']; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(info.distribution)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "mithril-torch"


def backward_only(name: str) -> bool:
    """A gradient form: a core primitive with a differentiable input but no gradient rule (backward graphs only)."""
    decl = get(name)
    return decl.core and decl.vjp is None and any(decl.differentiable(port.name) for port in decl.inputs)


def test_torch_lowers_every_forward_core_primitive_and_runs_every_declared_one() -> None:
    """The kit accepts a refusal; torch promises none. Autograd differentiates, so gradient forms are not needed."""
    assert {p for p in PRIMITIVES if backward_only(p)} == {
        "conv_input_grad",
        "conv_weight_grad",
        "max_pool_grad",
        "avg_pool_grad",
        "embedding_grad",
    }
    forward = {p for p in CORE_SET if not backward_only(p)}
    assert forward <= set(TORCH_OPS), sorted(forward - set(TORCH_OPS))
    backend = ml.TorchBackend()
    assert not [p for p in PRIMITIVES if not backward_only(p) and not backend.supports(p)]


def test_unknown_device_lists_available_ones() -> None:
    with pytest.raises(ValueError, match=r"device 'tpu' is not available; available devices: \['cpu'"):
        ml.TorchBackend(device="tpu")
    with pytest.raises(ValueError, match=r"'cuda:99' is not available"):
        ml.TorchBackend(device="cuda:99")


def test_unknown_option_is_rejected_with_valid_ones() -> None:
    valid = r"valid options are \['dtype', 'device', 'device_mesh'\]"
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['quantize'\]; " + valid):
        ml.TorchBackend(quantize="int8")


@pytest.mark.parametrize("dtype", [ml.int32, "float8", 3])
def test_bad_dtype(dtype: object) -> None:
    with pytest.raises(TypeError, match="dtype"):
        ml.TorchBackend(dtype=dtype)  # type: ignore[arg-type]


def test_unknown_compile_option_and_compile_options_without_jit() -> None:
    backend = ml.TorchBackend()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fuse'\] for backend 'torch'"):
        ml.compile(mlp(), backend, shapes={"input": [2, 4]}, fuse=True)
    with pytest.raises(TypeError, match="need jit=True"):
        ml.compile(mlp(), backend, shapes={"input": [2, 4]}, compile_options={"backend": "eager"})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [ml.float16, ml.bfloat16, ml.float32, ml.float64])
def test_dtypes_and_devices_run_forward_and_backward(dtype: ml.DType, device: str) -> None:
    backend = ml.TorchBackend(dtype=dtype, device=device)
    compiled = ml.compile(mlp(), backend, shapes={"input": [5, 4]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(5, 4)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": backend.ones(5, 3)})
    native = backend.native_dtype(dtype)
    assert out["output"].dtype == native and out["output"].device.type == device
    assert all(g.dtype == native and g.shape == params[k].shape for k, g in grads.items())
    assert backend.dtype_of(x) is dtype and backend.is_array(x) and not backend.is_array(np.zeros(2))


def test_input_checks_name_key_and_expected_vs_given() -> None:
    backend = ml.TorchBackend()
    compiled = ml.compile(mlp(), backend, shapes={"input": [5, 4]})
    params = compiled.randomize_params(seed=0)
    with pytest.raises(ml.KeyNotFoundError, match=r"missing key 'input'"):
        compiled.evaluate(params, {"inputs": backend.randn(5, 4)})
    with pytest.raises(ml.ShapeError, match=r"inputs\['input'\]: expected shape \[5, 4\], got \[5, 3\]"):
        compiled.evaluate(params, {"input": backend.randn(5, 3)})
    with pytest.raises(ml.DTypeMismatchError, match=r"expected dtype float32 .* got float64"):
        compiled.evaluate(params, {"input": backend.randn(5, 4, dtype=ml.float64)})
    with pytest.raises(TypeError, match="expected an array of backend 'torch', got ndarray"):
        compiled.evaluate(params, {"input": np.zeros((5, 4), np.float32)})
    with pytest.raises(ml.ShapeError, match=r"output_gradients\['output'\]: expected shape \[5, 3\]"):
        compiled.evaluate(params, {"input": backend.randn(5, 4)}, {"output": backend.ones(5, 2)})


def test_gradients_for_a_subset_of_outputs_and_zeros_for_unused_params() -> None:
    model = Model()
    model |= Linear(3)(input="input", output="a")
    model |= Linear(2)(input="input", output="b")
    backend, numpy_backend = ml.TorchBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    tm = ml.compile(model, backend, shapes={"input": [4, 5]}, outputs=["a", "b"])
    nm = ml.compile(model, numpy_backend, shapes={"input": [4, 5]}, outputs=["a", "b"])
    params = tm.randomize_params(seed=1)
    x, g = backend.randn(4, 5), backend.randn(4, 3)
    out, grads = tm.evaluate(params, {"input": x}, {"a": g})
    n_out, n_grads = nm.evaluate(
        {k: backend.to_numpy(v) for k, v in params.items()}, {"input": backend.to_numpy(x)}, {"a": backend.to_numpy(g)}
    )
    assert set(out) == {"a", "b"} and list(grads) == list(params)
    for key in params:
        np.testing.assert_allclose(backend.to_numpy(grads[key]), n_grads[key], rtol=1e-10, atol=1e-12)
    assert not grads["linear_1.weight"].any() and not out["a"].requires_grad
    with pytest.raises(ml.KeyNotFoundError, match="non-empty subset"):
        tm.evaluate(params, {"input": x}, {"c": g})


def test_forward_does_no_autograd_work_and_grad_mode_is_restored() -> None:
    backend = ml.TorchBackend()
    compiled = ml.compile(mlp(), backend, shapes={"input": [5, 4]})
    params = {k: v.requires_grad_() for k, v in compiled.randomize_params(seed=0).items()}
    out = compiled.evaluate(params, {"input": backend.randn(5, 4)})["output"]
    assert out.grad_fn is None and not out.requires_grad and torch.is_grad_enabled()
    with torch.no_grad():
        _, grads = compiled.evaluate(params, {"input": backend.randn(5, 4)}, {"output": backend.ones(5, 3)})
        assert not torch.is_grad_enabled()
    assert grads["linear_0.weight"].abs().sum() > 0 and all(p.grad is None for p in params.values())


def test_inference_builds_forward_only() -> None:
    compiled = ml.compile(mlp(), ml.TorchBackend(), shapes={"input": [5, 4]}, inference=True)
    assert "def forward_backward" not in compiled.code and "_grad((" not in compiled.code
    params = compiled.randomize_params(seed=0)
    with pytest.raises(ml.UnsupportedError, match="inference only"):
        compiled.evaluate(params, {"input": ml.TorchBackend().randn(5, 4)}, {"output": ml.TorchBackend().ones(5, 3)})


def test_generated_code_calls_torch_directly() -> None:
    compiled = ml.compile(mlp(), ml.TorchBackend(), shapes={"input": [5, 4]})
    assert "torch.relu((F.linear(input, linear_0_weight, linear_0_bias)))" in compiled.code


def test_jit_wraps_ops_in_torch_compile_and_matches_eager() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    eager = ml.compile(mlp(), backend, shapes={"input": [5, 4]})
    jitted = ml.compile(mlp(), backend, shapes={"input": [5, 4]}, jit=True, compile_options={"backend": "eager"})
    assert "_core = _torch_compile(_core" in jitted.code
    params = eager.randomize_params(seed=0)
    x, g = backend.randn(5, 4), backend.randn(5, 3)
    e_out, e_grads = eager.evaluate(params, {"input": x}, {"output": g})
    j_out, j_grads = jitted.evaluate(params, {"input": x}, {"output": g})
    torch.testing.assert_close(jitted.evaluate(params, {"input": x})["output"], e_out["output"])
    torch.testing.assert_close(j_out["output"], e_out["output"])
    for key in params:
        torch.testing.assert_close(j_grads[key], e_grads[key])


def test_seeded_rng_is_reproducible_and_owned_by_the_backend() -> None:
    a, b = ml.TorchBackend(), ml.TorchBackend()
    a.set_seed(4)
    b.set_seed(4)
    torch.manual_seed(0)
    first = (a.randn(3, 2), a.rand(4))
    torch.manual_seed(1)
    assert torch.equal(first[0], b.randn(3, 2)) and torch.equal(first[1], b.rand(4))
    assert bool((first[1] >= 0).all() and (first[1] < 1).all())
    assert not torch.equal(ml.TorchBackend().randn(8), ml.TorchBackend().randn(8))


def test_array_helpers_match_numpy_backend() -> None:
    tb, nb = ml.TorchBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    data = np.random.default_rng(0).standard_normal((2, 3, 4))
    x, y = tb.array(data), nb.array(data)
    pairs = [
        (tb.mean(x), nb.mean(y)),
        (tb.mean(x, axis=1, keepdim=True), nb.mean(y, axis=1, keepdim=True)),
        (tb.sum(x, axis=(0, 2)), nb.sum(y, axis=(0, 2))),
        (tb.sum(x, keepdim=True), nb.sum(y, keepdim=True)),
        (tb.max(x), nb.max(y)),
        (tb.max(x, axis=-1, keepdim=True), nb.max(y, axis=-1, keepdim=True)),
        (tb.argmax(x), nb.argmax(y)),
        (tb.argmax(x, axis=1), nb.argmax(y, axis=1)),
        (tb.exp(x), nb.exp(y)),
        (tb.log(tb.abs(x)), nb.log(nb.abs(y))),
        (tb.sqrt(tb.abs(x)), nb.sqrt(nb.abs(y))),
        (tb.reshape(x, (6, 4)), nb.reshape(y, (6, 4))),
        (tb.transpose(x), nb.transpose(y)),
        (tb.transpose(x, (1, 0, 2)), nb.transpose(y, (1, 0, 2))),
        (tb.concat([x, x], axis=1), nb.concat([y, y], axis=1)),
        (tb.matmul(x, tb.transpose(x, (0, 2, 1))), nb.matmul(y, nb.transpose(y, (0, 2, 1)))),
        (tb.ones(2, 3), nb.ones(2, 3)),
        (tb.zeros(4), nb.zeros(4)),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(tb.to_numpy(got), want, rtol=1e-12)
        assert tuple(got.shape) == np.shape(want)


def test_array_accepts_lists_numpy_tensors_and_dlpack() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    from_list = backend.array([[1.0, 2.0], [3.0, 4.0]])
    assert from_list.dtype == torch.float64 and from_list.device.type == "cpu"
    assert backend.array([1, 2]).dtype == torch.int64
    data = np.arange(4.0)
    shared = backend.array(data)
    data[0] = 9.0
    assert shared[0] == 9.0, "float64 numpy data on cpu is shared, not copied"
    assert backend.array(data[::-1])[0] == 3.0
    assert backend.array(torch.ones(2, dtype=torch.float32)).dtype == torch.float64
    assert backend.array(data, dtype=ml.float32).dtype == torch.float32
    jnp = pytest.importorskip("jax.numpy")
    from_jax = backend.array(jnp.arange(3.0, dtype=jnp.float32))
    assert from_jax.dtype == torch.float64 and from_jax.tolist() == [0.0, 1.0, 2.0]
    bf16 = ml.TorchBackend(dtype=ml.bfloat16)
    assert bf16.array(jnp.ones(2, dtype=jnp.bfloat16)).dtype == torch.bfloat16
    assert bf16.array(np.asarray(jnp.ones(2, dtype=jnp.bfloat16))).dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_to_numpy_handles_bfloat16_grad_and_device(device: str) -> None:
    backend = ml.TorchBackend(dtype=ml.bfloat16, device=device)
    x = backend.ones(2, 3).requires_grad_()
    out = backend.to_numpy(x * 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.tolist() == [[2.0] * 3] * 2
    f32 = ml.TorchBackend(device=device)
    assert f32.to_numpy(f32.ones(2)).dtype == np.float32


def test_compile_options_are_type_checked_and_unknown_ones_listed() -> None:
    """(static_inference itself is checked on every backend by the conformance kit.)"""
    backend = ml.TorchBackend()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fuse'\] for backend 'torch'; valid options are"):
        ml.compile(mlp(), backend, fuse=True)
    with pytest.raises(TypeError, match=r"option 'compile_options' must be dict\[str, Any\], got 'eager' \(str\)"):
        ml.compile(mlp(), backend, jit=True, compile_options="eager")
