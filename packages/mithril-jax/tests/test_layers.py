"""Vision and training layers on JAX: the core's conformance kit, torch.nn parity, max-pool ties, dropout."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

import mithril as ml
from mithril.models import Dropout, Linear, MaxPool2d, Model, Relu
from mithril.testing.conformance import BackendConformance


# -- conformance kit and torch.nn parity ------------------------------------------------
class TestJaxConformance(BackendConformance):
    """The core's kit (primitives, torch.nn parity, behaviour) with the nox cell's dtype."""

    backend_name = "jax"


# -- max pooling with ties ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pool", "shape"),
    [
        (lambda: MaxPool2d(2), [2, 3, 6, 8]),
        (lambda: MaxPool2d(2, stride=1), [1, 2, 5, 5]),
        (lambda: MaxPool2d(3, stride=2, padding=1, ceil_mode=True), [1, 2, 6, 5]),
        (lambda: MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)), [2, 1, 7, 8]),
    ],
    ids=["tiles", "overlapping", "padded-ceil", "dilated"],
)
def test_max_pool_gradient_goes_to_the_first_maximum(pool: Any, shape: list[int]) -> None:
    model = Model()
    model |= pool()(input="input", output="output")
    x = np.random.default_rng(0).integers(0, 3, shape).astype(np.float64)  # many tied maxima
    results = []
    for backend in (ml.NumpyBackend(dtype=ml.float64), ml.JaxBackend(dtype=ml.float64)):
        compiled = ml.compile(model, backend, shapes={"input": shape}, trainable_keys=["input"])
        g = np.random.default_rng(1).standard_normal(tuple(int(d) for d in compiled.shapes["output"]))
        out, grads = compiled.evaluate({"input": backend.array(x)}, {}, {"output": backend.array(g)})
        results.append((backend.to_numpy(out["output"]), backend.to_numpy(grads["input"])))
    (want_out, want_grad), (got_out, got_grad) = results
    np.testing.assert_array_equal(got_out, want_out)
    np.testing.assert_array_equal(got_grad, want_grad)
    assert np.count_nonzero(got_grad) <= g.size


# -- dropout ----------------------------------------------------------------------------
def dropout_mlp(p: float) -> Model:
    """Linear -> Relu -> Dropout(p) -> Linear, exposing the dropout mask as output 'mask'."""
    model = Model()
    model |= Linear(64)(input="input", output="hidden")
    model += Relu()(input="hidden", output="act")
    model += Dropout(p)(input="act", output="dropped", mask="mask")
    model += Linear(4)(input="dropped", output="output")
    return model


def test_dropout_scales_kept_elements_and_drops_about_p() -> None:
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(Dropout(0.3), backend, shapes={"input": [200, 100]})
    out = np.asarray(compiled.evaluate({}, {"input": backend.ones(200, 100)})["output"])
    assert abs(np.mean(out == 0) - 0.3) < 0.02
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_is_seeded_and_draws_a_new_mask_per_call_without_retracing(counting_relu: list[int]) -> None:
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(dropout_mlp(0.5), backend, shapes={"input": [8, 16]}, outputs=["output", "mask"])
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(8, 16)}
    backend.set_seed(7)
    first = [np.asarray(compiled.evaluate(params, x)["mask"]) for _ in range(3)]
    backend.set_seed(7)
    again = [np.asarray(compiled.evaluate(params, x)["mask"]) for _ in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert set(np.unique(first[0])) == {0.0, 2.0}
    assert counting_relu[0] == 1  # one trace, however many calls


@pytest.mark.parametrize("jit", [True, False])
def test_each_call_advances_the_backend_key_like_next_key(jit: bool) -> None:
    """A call takes one key off the backend, as `next_key` would, whichever path it takes."""
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(dropout_mlp(0.5), backend, shapes={"input": [8, 16]}, outputs=["output", "mask"], jit=jit)
    params = compiled.randomize_params(seed=0)
    reordered = dict(reversed(list(params.items())))
    x, g = {"input": backend.randn(8, 16)}, {"output": backend.ones(8, 4)}
    calls = [
        lambda: compiled.evaluate(params, x)["mask"],
        lambda: compiled.evaluate(params, x, g)[0]["mask"],
        lambda: compiled.evaluate(reordered, x, g)[0]["mask"],
        lambda: compiled.evaluate(params, x, {"mask": backend.ones(8, 64)})[0]["mask"],
    ]
    for call in calls:
        backend.set_seed(3)
        mask = np.asarray(call())
        after = jax.random.key_data(backend.next_key())
        backend.set_seed(3)
        backend.next_key()
        np.testing.assert_array_equal(np.asarray(after), np.asarray(jax.random.key_data(backend.next_key())))
        backend.set_seed(3)
        np.testing.assert_array_equal(np.asarray(calls[0]()), mask)  # the same key gives the same mask


def test_dropout_gradient_uses_the_same_mask_as_the_output() -> None:
    backend = ml.JaxBackend(dtype=ml.float64)
    compiled = ml.compile(
        Dropout(0.4), backend, shapes={"input": [6, 50]}, trainable_keys=["input"], outputs=["output", "mask"]
    )
    x = backend.randn(6, 50)
    g = backend.randn(6, 50)
    out, grads = compiled.evaluate({"input": x}, {}, {"output": g})
    mask = np.asarray(out["mask"])
    np.testing.assert_allclose(np.asarray(out["output"]), np.asarray(x) * mask)
    np.testing.assert_allclose(np.asarray(grads["input"]), np.asarray(g) * mask)


def test_two_dropout_layers_draw_independent_masks() -> None:
    model = Model()
    model |= Dropout(0.5)(input="input", output="a", mask="mask_a")
    model |= Dropout(0.5)(input="input", output="b", mask="mask_b")
    backend = ml.JaxBackend()
    compiled = ml.compile(model, backend, shapes={"input": [32, 32]}, outputs=["mask_a", "mask_b"])
    out = compiled.evaluate({}, {"input": backend.ones(32, 32)})
    assert not np.array_equal(np.asarray(out["mask_a"]), np.asarray(out["mask_b"]))


@pytest.mark.parametrize("jit", [True, False])
def test_dropout_is_the_identity_for_inference(jit: bool) -> None:
    backend = ml.JaxBackend()
    compiled = ml.compile(dropout_mlp(0.5), backend, shapes={"input": [8, 16]}, inference=True, jit=jit)
    assert "dropout" not in compiled.code and "_rng_key" not in compiled.code
    params = compiled.randomize_params(seed=0)
    x = backend.randn(8, 16)
    p = {k: np.asarray(v) for k, v in params.items()}
    want = np.maximum(np.asarray(x) @ p["linear_0.weight"].T + p["linear_0.bias"], 0)
    want = want @ p["linear_1.weight"].T + p["linear_1.bias"]
    np.testing.assert_allclose(
        np.asarray(compiled.evaluate(params, {"input": x})["output"]), want, rtol=1e-5, atol=1e-5
    )
