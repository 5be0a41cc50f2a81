"""Vision and training layers on torch: dropout, running statistics as state, device checks, jit."""

from __future__ import annotations

import pytest
import torch
from torch_devices import DEVICES

import mithril as ml
from mithril.models import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, Model
from mithril.testing.torch_parity import quickstart_cnn


def dropout_model(p: float) -> Model:
    """input -> Dropout(p), returning the output and the scaled keep mask."""
    model = Model()
    model |= Dropout(p)(input="input", output="output", mask="mask")
    return model


def small_cnn() -> Model:
    """Conv2d -> BatchNorm2d -> Dropout -> Flatten -> Linear, every stateful and random layer at once."""
    model = Model()
    model |= Conv2d(3, 4, 3)(input="input", output="c")
    model += BatchNorm2d(4)(input="c", output="b")
    model += Dropout(0.5)(input="b", output="d")
    model += Flatten()(input="d", output="f")
    model += Linear(2)(input="f", output="output")
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_is_seeded_scaled_and_drops_about_p(device: str) -> None:
    backend = ml.TorchBackend(dtype=ml.float64, device=device)
    compiled = ml.compile(dropout_model(0.3), backend, shapes={"input": [200, 100]}, outputs=["output", "mask"])
    x = backend.randn(200, 100)
    backend.set_seed(7)
    first = compiled.evaluate({}, {"input": x})
    torch.manual_seed(0)
    backend.set_seed(7)
    again = compiled.evaluate({}, {"input": x})
    other = compiled.evaluate({}, {"input": x})
    assert torch.equal(first["output"], again["output"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["mask"], other["mask"])
    mask = first["mask"]
    assert mask.device.type == device
    torch.testing.assert_close(torch.unique(mask), torch.tensor([0.0, 1 / 0.7], dtype=torch.float64, device=device))
    assert abs(float((mask == 0).double().mean()) - 0.3) < 0.02
    torch.testing.assert_close(first["output"], x * mask, rtol=0, atol=0)


def test_dropout_gradient_is_the_masked_seed_and_the_mask_has_none() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    model = Model()
    model |= Linear(5)(input="input", output="h")
    model |= Dropout(0.5)(input="h", output="output", mask="mask")
    compiled = ml.compile(model, backend, shapes={"input": [6, 4]}, outputs=["output", "mask"])
    params = compiled.randomize_params(seed=1)
    x, g = backend.randn(6, 4), backend.randn(6, 5)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g, "mask": backend.ones(6, 5)})
    torch.testing.assert_close(grads["linear_0.bias"], (g * out["mask"]).sum(0))
    assert not out["mask"].requires_grad and not out["output"].requires_grad


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_edge_probabilities(p: float) -> None:
    backend = ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(dropout_model(p), backend, shapes={"input": [3, 4]}, outputs=["output", "mask"])
    x = backend.randn(3, 4)
    out = compiled.evaluate({}, {"input": x})
    torch.testing.assert_close(out["output"], x * (1.0 - p))
    assert torch.equal(out["mask"], torch.full_like(x, 1.0 - p))


def test_dropout_is_identity_for_inference() -> None:
    backend = ml.TorchBackend(dtype=ml.float32)
    model = Model()
    model |= Linear(3)(input="input", output="h")
    model += Dropout(0.5)(input="h", output="output")
    compiled = ml.compile(model, backend, shapes={"input": [2, 4]}, inference=True)
    params = compiled.randomize_params(seed=0)
    x = backend.randn(2, 4)
    assert "_k.dropout" not in compiled.code
    torch.testing.assert_close(
        compiled.evaluate(params, {"input": x})["output"], x @ params["linear_0.weight"].T + params["linear_0.bias"]
    )
    with pytest.raises(ml.KeyNotFoundError, match="'mask' is not produced"):
        ml.compile(dropout_model(0.5), backend, shapes={"input": [2, 4]}, inference=True, outputs=["output", "mask"])


def test_running_statistics_update_as_detached_state_and_apply_leaves_inputs_alone() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    compiled = ml.compile(small_cnn(), backend, shapes={"input": [4, 3, 6, 6]})
    params = compiled.randomize_params(seed=2)
    x, g = backend.randn(4, 3, 6, 6), backend.randn(4, 2)
    state = compiled.initial_state()
    before = {k: v.clone() for k, v in state.items()}
    outputs, grads, new_state = compiled.apply(params, {"input": x}, state, {"output": g})
    assert all(torch.equal(state[k], before[k]) for k in state), "apply must not update the given state in place"
    assert set(new_state) == set(state) and not any(v.requires_grad for v in new_state.values())
    torch.testing.assert_close(
        new_state["batchnorm2d_0.running_mean"],
        0.1
        * backend.mean(
            torch.nn.functional.conv2d(x, params["conv2d_0.weight"], params["conv2d_0.bias"]), axis=(0, 2, 3)
        ),
    )
    assert set(grads) == set(params) and not outputs["output"].requires_grad
    _, grads_too = compiled.evaluate(params, {"input": x}, {"output": g})
    assert compiled.state is not None and not compiled.state["batchnorm2d_0.running_var"].requires_grad
    assert set(grads_too) == set(params)


def test_gradients_for_state_outputs_are_refused() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    model = Model()
    model |= BatchNorm2d(3)(input="input", output="output")
    compiled = ml.compile(model, backend, shapes={"input": [2, 3, 4, 4]})
    params = compiled.randomize_params(seed=0)
    x, g = backend.randn(2, 3, 4, 4), backend.randn(2, 3, 4, 4)
    out_grads = {"output": g, "batchnorm2d_0.running_mean_out": backend.ones(3)}
    with pytest.raises(ml.KeyNotFoundError, match=r"subset of the outputs \['output'\]"):
        compiled.apply(params, {"input": x}, compiled.initial_state(), out_grads)
    assert compiled.apply(params, {"input": x}, compiled.initial_state(), {"output": g})[1].keys() == params.keys()


def test_jit_matches_eager_with_batch_norm_and_dropout() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    shapes = {"input": [2, 3, 6, 6]}
    eager = ml.compile(small_cnn(), backend, shapes=shapes)
    jitted = ml.compile(small_cnn(), backend, shapes=shapes, jit=True, compile_options={"backend": "eager"})
    params = eager.randomize_params(seed=0)
    x, g = backend.randn(2, 3, 6, 6), backend.randn(2, 2)
    backend.set_seed(5)
    e_out, e_grads = eager.evaluate(params, {"input": x}, {"output": g})
    backend.set_seed(5)
    j_out, j_grads = jitted.evaluate(params, {"input": x}, {"output": g})
    torch.testing.assert_close(j_out["output"], e_out["output"])
    for key in params:
        torch.testing.assert_close(j_grads[key], e_grads[key])
    assert eager.state is not None and jitted.state is not None
    for key in eager.state:
        torch.testing.assert_close(jitted.state[key], eager.state[key])


def test_generated_code_calls_torch_and_frees_intermediates() -> None:
    compiled = ml.compile(quickstart_cnn(), ml.TorchBackend(), shapes={"input": [2, 3, 8, 8]})
    code = compiled.code
    assert "F.conv2d(input, conv2d_0_weight, conv2d_0_bias, (1, 1), (1, 1), (1, 1), 1)" in code
    assert "F.max_pool2d((torch.relu(bn1)), (2, 2), (2, 2), (0, 0), (1, 1), False)" in code
    assert "del conv1" in code and "del output" not in code


def test_pooling_inputs_of_other_ranks() -> None:
    from mithril.models import AvgPool2d, MaxPool2d  # noqa: PLC0415

    tb, nb = ml.TorchBackend(dtype=ml.float64), ml.NumpyBackend(dtype=ml.float64)
    for layer, shape in [(MaxPool2d(2), [5, 6]), (AvgPool2d(2, padding=1), [2, 2, 3, 5, 4])]:
        t = ml.compile(layer, tb, shapes={"input": shape})
        n = ml.compile(layer, nb, shapes={"input": shape})
        x = tb.randn(*shape)
        want = n.evaluate({}, {"input": tb.to_numpy(x)})["output"]
        torch.testing.assert_close(t.evaluate({}, {"input": x})["output"], tb.array(want))


def test_tensor_on_another_device_names_the_key_and_both_devices() -> None:
    backend = ml.TorchBackend()
    compiled = ml.compile(small_cnn(), backend, shapes={"input": [2, 3, 6, 6]})
    params = compiled.randomize_params(seed=0)
    on_meta = torch.empty(2, 3, 6, 6, device="meta")
    with pytest.raises(ValueError, match=r"inputs\['input'\]: tensor is on device 'meta', expected 'cpu'"):
        compiled.evaluate(params, {"input": on_meta})
    params["linear_0.weight"] = params["linear_0.weight"].to("meta")
    with pytest.raises(ValueError, match=r"params\['linear_0.weight'\]: tensor is on device 'meta'"):
        compiled.evaluate(params, {"input": backend.randn(2, 3, 6, 6)}, {"output": backend.ones(2, 2)})
    assert backend.extra_checks("x") == [("x.device", torch.device("cpu"))]
    assert backend.array_problem(backend.ones(2)) is None


@pytest.mark.parametrize("device", DEVICES)
def test_device_check_accepts_the_backend_device(device: str) -> None:
    backend = ml.TorchBackend(device=device)
    compiled = ml.compile(small_cnn(), backend, shapes={"input": [2, 3, 6, 6]})
    params = compiled.randomize_params(seed=0)
    out = compiled.evaluate(params, {"input": backend.randn(2, 3, 6, 6)})["output"]
    assert out.device == backend.ones(1).device and backend.generator.device == out.device
    if device != "cpu":
        with pytest.raises(ValueError, match=r"inputs\['input'\]: tensor is on device 'cpu', expected 'cuda:0'"):
            compiled.evaluate(params, {"input": torch.randn(2, 3, 6, 6)})
