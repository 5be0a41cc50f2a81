"""The quick start's PyTorch sections run as written, and agree with the NumPy backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_devices import DEVICES

import mithril as ml
from mithril.models import Linear, Model, Relu


def quickstart_model() -> Model:
    """The quick start's two-layer network."""
    model = Model()
    model |= Linear(dimension=64)
    model += Relu()
    model += Linear(dimension=10)
    return model


def test_quickstart_pytorch_gradients_and_training_loop(capsys: pytest.CaptureFixture[str]) -> None:
    model = quickstart_model()
    torch_backend = ml.TorchBackend(dtype=ml.float32)
    torch_backend.set_seed(0)

    # -- PyTorch Backend (as written) --
    torch_model = ml.compile(
        model=model,
        backend=torch_backend,
        shapes={"input": [32, 20]},
    )
    params = torch_model.randomize_params()
    inputs = {"input": torch_backend.randn(32, 20)}
    outputs = torch_model.evaluate(params, inputs)
    print(f"PyTorch output shape: {outputs['output'].shape}")
    assert outputs["output"].shape == (32, 10)

    # -- Computing Gradients (as written) --
    input_data = torch_backend.randn(32, 20)
    inputs = {"input": input_data}
    outputs = torch_model.evaluate(params, inputs)
    predictions = outputs["output"]
    targets = torch_backend.randn(32, 10)
    diff = predictions - targets
    loss = torch_backend.mean(diff * diff)
    output_gradients = {"output": 2 * diff / diff.shape[0]}
    _, gradients = torch_model.evaluate(params, inputs, output_gradients=output_gradients)
    learning_rate = 0.01
    for param_name, grad in gradients.items():
        params[param_name] = params[param_name] - learning_rate * grad
    assert set(gradients) == set(params) and loss.ndim == 0

    # -- Training Loop (as written; the per-epoch loss is also recorded) --
    def create_dummy_data(backend, num_samples=1000, input_dim=20, output_dim=10):  # type: ignore[no-untyped-def]
        X = backend.randn(num_samples, input_dim)
        W = backend.randn(input_dim, output_dim)
        b = backend.randn(output_dim)
        Y = backend.matmul(X, W) + b + 0.1 * backend.randn(num_samples, output_dim)
        return X, Y

    X, Y = create_dummy_data(torch_backend)
    batch_size = 32
    num_batches = len(X) // batch_size
    epochs = 5
    learning_rate = 0.01
    history = []
    for epoch in range(epochs):
        total_loss = 0
        for i in range(num_batches):
            start_idx = i * batch_size
            end_idx = (i + 1) * batch_size
            X_batch = X[start_idx:end_idx]
            Y_batch = Y[start_idx:end_idx]
            inputs = {"input": X_batch}
            outputs = torch_model.evaluate(params, inputs)
            predictions = outputs["output"]
            diff = predictions - Y_batch
            loss = torch_backend.mean(diff * diff)
            total_loss += loss
            output_gradients = {"output": 2 * diff / batch_size}
            _, gradients = torch_model.evaluate(params, inputs, output_gradients)
            for param_name, grad in gradients.items():
                params[param_name] = params[param_name] - learning_rate * grad
        avg_loss = total_loss / num_batches
        print(f"Epoch {epoch + 1}/{epochs}, Loss: {avg_loss}")
        history.append(float(avg_loss))

    assert all(later < earlier for earlier, later in zip(history, history[1:])), history
    assert "Epoch 5/5" in capsys.readouterr().out


def test_quickstart_cnn_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from mithril.models import BatchNorm2d, Conv2d, Flatten, MaxPool2d  # noqa: PLC0415

    torch_backend = ml.TorchBackend(dtype=ml.float32)

    # -- Building a More Complex Model (as written) --
    cnn = Model()
    cnn |= Conv2d(in_channels=3, out_channels=16, kernel_size=3, padding=1)(input="input", output="conv1")
    cnn += BatchNorm2d(num_features=16)(input="conv1", output="bn1")
    cnn += Relu()(input="bn1", output="relu1")
    cnn += MaxPool2d(kernel_size=2)(input="relu1", output="pool1")
    cnn += Conv2d(in_channels=16, out_channels=32, kernel_size=3, padding=1)(input="pool1", output="conv2")
    cnn += BatchNorm2d(num_features=32)(input="conv2", output="bn2")
    cnn += Relu()(input="bn2", output="relu2")
    cnn += MaxPool2d(kernel_size=2)(input="relu2", output="pool2")
    cnn += Flatten()(input="pool2", output="flat")
    cnn += Linear(dimension=128)(input="flat", output="fc1")
    cnn += Relu()(input="fc1", output="relu3")
    cnn += Linear(dimension=10)(input="relu3", output="output")
    torch_cnn = ml.compile(
        model=cnn,
        backend=torch_backend,
        shapes={"input": [32, 3, 32, 32]},  # CIFAR-10 sized images
    )
    cnn_params = torch_cnn.randomize_params()
    cnn_inputs = {"input": torch_backend.randn(32, 3, 32, 32)}
    cnn_outputs = torch_cnn.evaluate(cnn_params, cnn_inputs)
    print(f"CNN output shape: {cnn_outputs['output'].shape}")  # [32, 10]

    assert list(cnn_outputs["output"].shape) == [32, 10]
    assert "CNN output shape: torch.Size([32, 10])" in capsys.readouterr().out
    assert torch_cnn.state is not None and float(torch_cnn.state["batchnorm2d_0.running_var"].sum()) != 16.0
    _, grads = torch_cnn.evaluate(cnn_params, cnn_inputs, {"output": torch_backend.ones(32, 10)})
    assert set(grads) == set(cnn_params) and all(g.shape == cnn_params[k].shape for k, g in grads.items())


def test_quickstart_parameter_exchange_to_numpy_and_jax() -> None:
    jnp = pytest.importorskip("jax.numpy")
    torch_backend = ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_model(), torch_backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=3)
    numpy_backend = ml.NumpyBackend(dtype=ml.float32)
    numpy_model = ml.compile(quickstart_model(), numpy_backend, shapes={"input": [32, 20]})
    numpy_params = {k: numpy_backend.array(torch_backend.to_numpy(v)) for k, v in params.items()}
    jax_params = {k: jnp.asarray(torch_backend.to_numpy(v)) for k, v in params.items()}
    x = torch_backend.randn(32, 20)
    expected = compiled.evaluate(params, {"input": x})["output"]
    got = numpy_model.evaluate(numpy_params, {"input": torch_backend.to_numpy(x)})["output"]
    np.testing.assert_allclose(got, torch_backend.to_numpy(expected), rtol=1e-5, atol=1e-6)
    back = {k: torch_backend.array(v) for k, v in jax_params.items()}
    for key, value in back.items():
        assert torch.equal(value, params[key]) and value.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_torch_agree_on_mlp_in_float64(device: str) -> None:
    torch_backend = ml.TorchBackend(dtype=ml.float64, device=device)
    numpy_backend = ml.NumpyBackend(dtype=ml.float64)
    tm = ml.compile(quickstart_model(), torch_backend, shapes={"input": [32, 20]})
    nm = ml.compile(quickstart_model(), numpy_backend, shapes={"input": [32, 20]})
    params = tm.randomize_params(seed=7)
    x, g = torch_backend.randn(32, 20), torch_backend.randn(32, 10)
    t_out, t_grads = tm.evaluate(params, {"input": x}, {"output": g})
    n_params = {k: numpy_backend.array(torch_backend.to_numpy(v)) for k, v in params.items()}
    n_out, n_grads = nm.evaluate(n_params, {"input": torch_backend.to_numpy(x)}, {"output": torch_backend.to_numpy(g)})
    np.testing.assert_allclose(torch_backend.to_numpy(t_out["output"]), n_out["output"], rtol=1e-10)
    assert list(t_grads) == list(params)
    for key in params:
        np.testing.assert_allclose(torch_backend.to_numpy(t_grads[key]), n_grads[key], rtol=1e-10, atol=1e-12)
        assert t_grads[key].device.type == device


def test_matches_torch_nn_linear() -> None:
    torch_backend = ml.TorchBackend(dtype=ml.float64)
    model = Model()
    model |= Linear(dimension=7)
    compiled = ml.compile(model, torch_backend, shapes={"input": [5, 3]})
    layer = torch.nn.Linear(3, 7, dtype=torch.float64)
    params = {"linear_0.weight": layer.weight.detach().clone(), "linear_0.bias": layer.bias.detach().clone()}
    x, g = torch_backend.randn(5, 3), torch_backend.randn(5, 7)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g})
    expected = layer(x)
    expected.backward(g)
    torch.testing.assert_close(out["output"], expected.detach(), rtol=1e-12, atol=1e-12)
    assert layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(grads["linear_0.weight"], layer.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads["linear_0.bias"], layer.bias.grad, rtol=1e-12, atol=1e-12)
