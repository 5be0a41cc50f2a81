"""Device-mesh cases; run by test_mesh.py in a process started with 8 emulated CPU devices.

Not collected on its own (no test_ prefix): XLA_FLAGS must be set before jax starts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import mithril as ml
from mithril.models import Dropout, Linear, Model, Relu
from mithril.testing.models import quickstart_mlp
from mithril.testing.torch_parity import quickstart_cnn

assert jax.device_count("cpu") == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"

TOL = {"rtol": 1e-5, "atol": 1e-5}


def single_device_reference(model: Model, shapes: dict[str, list[int]]) -> tuple[Any, Any, Any, Any]:
    """A one-device compile, its params, an input and an output gradient (all numpy)."""
    backend = ml.JaxBackend()
    compiled = ml.compile(model, backend, shapes=shapes)
    params = {k: np.asarray(v) for k, v in compiled.randomize_params(seed=0).items()}
    rng = np.random.default_rng(1)
    inputs = {k: rng.standard_normal(compiled.shapes[k]).astype(np.float32) for k in compiled.input_keys}
    p, x = {k: backend.array(v) for k, v in params.items()}, {k: backend.array(v) for k, v in inputs.items()}
    grads_in = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in compiled.evaluate(p, x).items()}
    ref = compiled.evaluate(p, x, {k: backend.array(v) for k, v in grads_in.items()})
    return params, inputs, grads_in, ref


def assert_close(got: Any, want: Any) -> None:
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for key in w:
            np.testing.assert_allclose(np.asarray(g[key]), np.asarray(w[key]), **TOL, err_msg=key)


@pytest.mark.parametrize("jit", [True, False])
def test_quickstart_scaling_line_on_eight_cpu_devices(jit: bool) -> None:
    model = quickstart_mlp()
    params, inputs, grads_in, ref = single_device_reference(model, {"input": [32, 20]})
    backend = ml.JaxBackend(device="cpu", device_mesh=(8,))
    scaling_model = ml.compile(model, backend, jit=jit)
    p = {k: backend.array(v) for k, v in params.items()}
    x = {k: backend.array(v) for k, v in inputs.items()}
    g = {k: backend.array(v) for k, v in grads_in.items()}
    out = scaling_model.evaluate(p, x)
    out_fb, grads = scaling_model.evaluate(p, x, g)
    assert_close((out_fb, grads), ref)
    np.testing.assert_allclose(np.asarray(out["output"]), np.asarray(ref[0]["output"]), **TOL)
    assert len(out["output"].sharding.device_set) == 8
    if jit:
        assert out["output"].sharding.spec == PartitionSpec("data")
        assert all(v.sharding.is_fully_replicated for v in grads.values())


def test_batch_that_the_mesh_does_not_divide() -> None:
    backend = ml.JaxBackend(device_mesh=(8,))
    model = ml.compile(quickstart_mlp(), backend)
    params = ml.compile(quickstart_mlp(), backend, shapes={"input": [8, 20]}).randomize_params(seed=0)
    with pytest.raises(ml.ShapeError, match=r"'input' has size 30 in dimension 0.*8 devices of mesh axis 'data'"):
        model.evaluate(params, {"input": backend.randn(30, 20)})
    with pytest.raises(ml.ShapeError, match=r"'input' has size 30"):
        model.evaluate(params, {"input": backend.randn(30, 20)}, {"output": backend.ones(30, 10)})
    assert model.evaluate(params, {"input": backend.randn(16, 20)})["output"].shape == (16, 10)
    with pytest.raises(ml.ShapeError, match=r"ml.compile\(Model\): 'input' has size 12 in dimension 0"):
        ml.compile(quickstart_mlp(), backend, shapes={"input": [12, 20]})


def test_bad_arguments_on_a_mesh_give_core_errors() -> None:
    backend = ml.JaxBackend(device_mesh=(8,))
    model = ml.compile(quickstart_mlp(), backend, shapes={"input": [16, 20]})
    params = model.randomize_params(seed=0)
    with pytest.raises(ml.KeyNotFoundError, match="missing key 'input'"):
        model.evaluate(params, {"inptu": backend.randn(16, 20)})
    with pytest.raises(ml.ShapeError, match=r"expected shape \[16, 20\], got \[16, 21\]"):
        model.evaluate(params, {"input": backend.randn(16, 21)})


def test_mesh_larger_than_the_platform() -> None:
    with pytest.raises(ValueError, match=r"device_mesh \(16,\) needs 16 cpu devices but 8 are present"):
        ml.JaxBackend(device_mesh=(16,))
    with pytest.raises(RuntimeError, match="'tpu' is not available"):
        ml.JaxBackend(device="tpu", device_mesh=(8,))


def test_model_parallel_linear_weight() -> None:
    model = Model()
    model |= Linear(512)(input="input", output="hidden")
    model += Relu()(input="hidden", output="act")
    model += Linear(16)(input="act", output="output")
    params, inputs, grads_in, ref = single_device_reference(model, {"input": [8, 64]})
    backend = ml.JaxBackend(device_mesh={"data": 2, "model": 4})
    compiled = ml.compile(
        model,
        backend,
        shapes={"input": [8, 64]},
        shardings={"linear_0.weight": ("model", None), "linear_0.bias": ("model",), "linear_1.weight": (None, "model")},
    )
    p = {k: backend.array(v) for k, v in params.items()}
    out, grads = compiled.evaluate(
        p, {k: backend.array(v) for k, v in inputs.items()}, {k: backend.array(v) for k, v in grads_in.items()}
    )
    assert_close((out, grads), ref)
    assert grads["linear_0.weight"].sharding.spec == PartitionSpec("model", None)
    assert grads["linear_0.weight"].addressable_shards[0].data.shape == (128, 64)


@pytest.mark.parametrize(
    ("shardings", "error", "pattern"),
    [
        ({"linear_9.weight": ("model", None)}, ml.KeyNotFoundError, "unknown key 'linear_9.weight'; keys are"),
        ({"linear_0.weight": ("tensor", None)}, ValueError, r"unknown mesh axis 'tensor'; the mesh axes are \['data'"),
        ({"linear_0.weight": ("model", None, None)}, ml.ShapeError, "3 entries for a key of rank 2"),
        ({"linear_1.bias": ("model",)}, ml.ShapeError, "'linear_1.bias' has size 10 in dimension 0.*4 devices"),
        ({"linear_0.weight": "model"}, TypeError, "must be a tuple of mesh axis names"),
    ],
)
def test_bad_shardings(shardings: dict[str, Any], error: type[Exception], pattern: str) -> None:
    backend = ml.JaxBackend(device_mesh=(2, 4))
    with pytest.raises(error, match=pattern):
        ml.compile(quickstart_mlp(), backend, shapes={"input": [8, 20]}, shardings=shardings)


def test_cnn_with_batch_norm_state_on_eight_cpu_devices() -> None:
    shapes = {"input": [16, 3, 8, 8]}
    single, meshed = ml.JaxBackend(), ml.JaxBackend(device_mesh=(8,))
    reference = ml.compile(quickstart_cnn(), single, shapes=shapes)
    compiled = ml.compile(quickstart_cnn(), meshed, shapes=shapes)
    params = {k: np.asarray(v) for k, v in reference.randomize_params(seed=0).items()}
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((16, 3, 8, 8), np.float32), rng.standard_normal((16, 10), np.float32)
    want = reference.evaluate(
        {k: single.array(v) for k, v in params.items()}, {"input": single.array(x)}, {"output": single.array(g)}
    )
    got = compiled.evaluate(
        {k: meshed.array(v) for k, v in params.items()}, {"input": meshed.array(x)}, {"output": meshed.array(g)}
    )
    assert_close(got, want)
    assert reference.state is not None and compiled.state is not None
    for key, value in reference.state.items():
        np.testing.assert_allclose(np.asarray(compiled.state[key]), np.asarray(value), **TOL, err_msg=key)
        assert compiled.state[key].sharding.is_fully_replicated


@pytest.mark.parametrize("jit", [True, False])
def test_dropout_on_a_mesh_is_seeded_and_draws_a_new_mask_per_call(jit: bool) -> None:
    model = Model()
    model |= Linear(16)(input="input", output="hidden")
    model += Dropout(0.5)(input="hidden", output="output", mask="mask")
    backend = ml.JaxBackend(device="cpu", device_mesh=(8,))
    compiled = ml.compile(model, backend, shapes={"input": [16, 8]}, outputs=["output", "mask"], jit=jit)
    params = compiled.randomize_params(seed=0)
    x, g = {"input": backend.randn(16, 8)}, {"output": backend.ones(16, 16)}
    backend.set_seed(5)
    first = [np.asarray(compiled.evaluate(params, x)["mask"]), np.asarray(compiled.evaluate(params, x, g)[0]["mask"])]
    backend.set_seed(5)
    again = [np.asarray(compiled.evaluate(params, x)["mask"]), np.asarray(compiled.evaluate(params, x, g)[0]["mask"])]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    reordered = dict(reversed(list(params.items())))
    _, grads = compiled.evaluate(reordered, x, {**g, "mask": backend.ones(16, 16)})
    assert list(grads) == list(reordered)
