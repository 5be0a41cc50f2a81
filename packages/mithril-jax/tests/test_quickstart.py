"""The quick start's JAX code, as written."""

from __future__ import annotations

import numpy as np
import pytest
from jax_test_helpers import source_backend

import mithril as ml
from mithril.testing.models import quickstart_mlp
from mithril.testing.torch_parity import quickstart_cnn


def test_quickstart_jax_section() -> None:
    model = quickstart_mlp()
    torch_backend = source_backend(ml.float32)
    torch_model = ml.compile(model=model, backend=torch_backend, shapes={"input": [32, 20]})
    params = torch_model.randomize_params()

    jax_backend = ml.JaxBackend(dtype=ml.float32)
    jax_model = ml.compile(model=model, backend=jax_backend, shapes={"input": [32, 20]}, jit=True)
    jax_params = {k: jax_backend.array(torch_backend.to_numpy(v)) for k, v in params.items()}
    jax_inputs = {"input": jax_backend.randn(32, 20)}
    jax_outputs = jax_model.evaluate(jax_params, jax_inputs)
    assert jax_outputs["output"].shape == (32, 10)
    assert jax_outputs["output"].dtype == np.float32

    reference = torch_model.evaluate(params, {"input": torch_backend.array(np.asarray(jax_inputs["input"]))})
    np.testing.assert_allclose(
        np.asarray(jax_outputs["output"]), torch_backend.to_numpy(reference["output"]), rtol=1e-5, atol=1e-5
    )


def test_quickstart_gradients_and_sgd_on_jax() -> None:
    jax_backend = ml.JaxBackend(dtype=ml.float32)
    jax_model = ml.compile(model=quickstart_mlp(), backend=jax_backend, shapes={"input": [32, 20]})
    params = jax_model.randomize_params()
    inputs = {"input": jax_backend.randn(32, 20)}
    targets = jax_backend.randn(32, 10)
    losses = []
    for _ in range(5):
        predictions = jax_model.evaluate(params, inputs)["output"]
        diff = predictions - targets
        losses.append(float(jax_backend.mean(diff * diff)))
        output_gradients = {"output": 2 * diff / diff.shape[0]}
        _, gradients = jax_model.evaluate(params, inputs, output_gradients=output_gradients)
        assert list(gradients) == list(params)
        for name, grad in gradients.items():
            params[name] = params[name] - 0.01 * grad
    assert losses[-1] < losses[0]


def test_quickstart_training_data_helpers() -> None:
    backend = ml.JaxBackend()
    x, w, b = backend.randn(1000, 20), backend.randn(20, 10), backend.randn(10)
    y = backend.matmul(x, w) + b + 0.1 * backend.randn(1000, 10)
    assert y.shape == (1000, 10) and y.dtype == np.float32
    assert x[0:32].shape == (32, 20)


def test_multi_backend_workflow_tpu_line_gives_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"'tpu' is not available.*platforms present: \['cpu'"):
        ml.compile(quickstart_mlp(), ml.JaxBackend(device="tpu", device_mesh=(8,)))


def test_quickstart_cnn_section_on_jax() -> None:
    cnn = quickstart_cnn()
    jax_backend = ml.JaxBackend(dtype=ml.float32)
    jax_cnn = ml.compile(model=cnn, backend=jax_backend, shapes={"input": [32, 3, 32, 32]})
    cnn_params = jax_cnn.randomize_params()
    cnn_inputs = {"input": jax_backend.randn(32, 3, 32, 32)}
    cnn_outputs = jax_cnn.evaluate(cnn_params, cnn_inputs)
    assert cnn_outputs["output"].shape == (32, 10)
    assert cnn_outputs["output"].dtype == np.float32


def test_quickstart_cnn_training_step_matches_numpy() -> None:
    """Outputs, gradients and updated running statistics of the CNN at the quick start's shapes, then eval."""
    shapes = {"input": [32, 3, 32, 32]}
    jb, nb = ml.JaxBackend(dtype=ml.float32), ml.NumpyBackend(dtype=ml.float32)
    jax_cnn = ml.compile(quickstart_cnn(), jb, shapes=shapes)
    np_cnn = ml.compile(quickstart_cnn(), nb, shapes=shapes)
    params = {k: np.asarray(v) for k, v in jax_cnn.randomize_params(seed=0).items()}
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((32, 3, 32, 32), np.float32), rng.standard_normal((32, 10), np.float32)
    got = jax_cnn.evaluate({k: jb.array(v) for k, v in params.items()}, {"input": jb.array(x)}, {"output": jb.array(g)})
    want = np_cnn.evaluate(params, {"input": x}, {"output": g})
    for got_part, want_part in zip(got, want):
        for key, value in want_part.items():
            np.testing.assert_allclose(np.asarray(got_part[key]), value, rtol=2e-3, atol=2e-4, err_msg=key)
    assert jax_cnn.state is not None and np_cnn.state is not None
    for key, value in np_cnn.state.items():
        np.testing.assert_allclose(np.asarray(jax_cnn.state[key]), value, rtol=1e-4, atol=1e-5, err_msg=key)

    jax_eval = ml.compile(quickstart_cnn(), jb, shapes=shapes, inference=True)
    jax_eval.state = dict(jax_cnn.state)
    np_eval = ml.compile(quickstart_cnn(), nb, shapes=shapes, inference=True)
    np_eval.state = dict(np_cnn.state)
    out = jax_eval.evaluate({k: jb.array(v) for k, v in params.items()}, {"input": jb.array(x)})["output"]
    np.testing.assert_allclose(np.asarray(out), np_eval.evaluate(params, {"input": x})["output"], rtol=2e-3, atol=2e-4)
