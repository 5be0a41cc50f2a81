"""Per-call cost of the compiled quick-start MLP, CNN and 1-D CNN on JAX against hand-written jax.jit code.

Both sides run jitted float32 code and block until the results are ready: the MLP at batch 32,
20 -> 64 -> 10; the CNN of the quick start at batch 32, 3x32x32, and quickstart_cnn1d at batch
32, 4x64, in training mode (batch statistics, running statistics updated). The ratio is Mithril's
time over the hand-written time (interleaved rounds, because a shared machine makes single rounds
noisy).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import mithril as ml
from mithril.testing.models import quickstart_cnn, quickstart_cnn1d, quickstart_mlp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, print_table  # noqa: E402

TARGET = 1.05


def mlp(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The quick-start MLP written by hand."""
    h = jax.nn.relu(x @ params["linear_0.weight"].T + params["linear_0.bias"])
    return h @ params["linear_1.weight"].T + params["linear_1.bias"]


@jax.jit
def forward(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Hand-written jitted forward pass."""
    return mlp(params, x)


@jax.jit
def forward_backward(
    params: dict[str, jax.Array], x: jax.Array, g: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hand-written jitted outputs and parameter gradients for cotangent `g`, via jax.vjp."""
    out, pullback = jax.vjp(lambda p: mlp(p, x), params)
    (grads,) = pullback(g)
    return out, grads


Params = dict[str, jax.Array]
Row = tuple[str, float, float, float, float]
BN_KEYS = ("batchnorm2d_0", "batchnorm2d_1")


def conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """3x3 convolution, padding 1, NCHW / OIHW."""
    y = lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[:, None, None]


def batch_norm(x: jax.Array, w: jax.Array, b: jax.Array, mean: jax.Array, var: jax.Array) -> tuple[jax.Array, ...]:
    """Training-mode batch norm over every axis but 1 (eps 1e-5, momentum 0.1) and the updated running statistics."""
    axes, per_channel = (0, *range(2, x.ndim)), (-1,) + (1,) * (x.ndim - 2)
    m = jnp.mean(x, axis=axes)
    v = jnp.mean(jnp.square(x - m.reshape(per_channel)), axis=axes)
    y = (x - m.reshape(per_channel)) * (lax.rsqrt(v + 1e-5) * w).reshape(per_channel) + b.reshape(per_channel)
    n = x.size // x.shape[1]
    m, v = lax.stop_gradient(m), lax.stop_gradient(v)
    return y, 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v * (n / (n - 1))


def max_pool(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def cnn(params: Params, x: jax.Array, state: Params) -> tuple[jax.Array, Params]:
    """The quick-start CNN written by hand: the logits and the new running statistics."""
    new_state = {}
    h = x
    for conv_key, bn_key in zip(("conv2d_0", "conv2d_1"), BN_KEYS):
        h = conv(h, params[f"{conv_key}.weight"], params[f"{conv_key}.bias"])
        h, mean, var = batch_norm(
            h,
            params[f"{bn_key}.weight"],
            params[f"{bn_key}.bias"],
            state[f"{bn_key}.running_mean"],
            state[f"{bn_key}.running_var"],
        )
        new_state[f"{bn_key}.running_mean"], new_state[f"{bn_key}.running_var"] = mean, var
        h = max_pool(jax.nn.relu(h))
    h = jnp.reshape(h, (h.shape[0], -1))
    h = jax.nn.relu(h @ params["linear_0.weight"].T + params["linear_0.bias"])
    return h @ params["linear_1.weight"].T + params["linear_1.bias"], new_state


@jax.jit
def cnn_forward(params: Params, x: jax.Array, state: Params) -> tuple[jax.Array, Params]:
    """Hand-written jitted CNN forward pass in training mode."""
    return cnn(params, x, state)


@jax.jit
def cnn_forward_backward(params: Params, x: jax.Array, state: Params, g: jax.Array) -> tuple[Any, ...]:
    """Hand-written jitted CNN logits, parameter gradients (via jax.vjp) and new running statistics."""
    out, pullback, new_state = jax.vjp(lambda p: cnn(p, x, state), params, has_aux=True)
    (grads,) = pullback(g)
    return out, grads, new_state


def cnn_rows() -> list[Row]:
    """The quick-start CNN, training mode, batch 32, 3x32x32, float32, jit."""
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [32, 3, 32, 32]}, jit=True)
    params = compiled.randomize_params(seed=0)
    state = compiled.initial_state()
    x, g = backend.randn(32, 3, 32, 32), backend.randn(32, 10)
    inputs, grads_in = {"input": x}, {"output": g}

    ours = compiled.apply(params, inputs, state, grads_in)
    ref = cnn_forward_backward(params, x, state, g)
    assert jnp.allclose(ours[0]["output"], ref[0], rtol=1e-4, atol=1e-4), "CNN forward results differ"
    assert all(jnp.allclose(ours[1][k], ref[1][k], rtol=1e-3, atol=1e-4) for k in params), "CNN gradients differ"
    assert all(jnp.allclose(ours[2][k], ref[2][k], rtol=1e-5, atol=1e-6) for k in state), "CNN state differs"

    def ours_forward() -> Any:
        return jax.block_until_ready(compiled.evaluate(params, inputs))

    def ref_forward() -> Any:
        return jax.block_until_ready(cnn_forward(params, x, state))

    def ours_backward() -> Any:
        return jax.block_until_ready(compiled.evaluate(params, inputs, grads_in))

    def ref_backward() -> Any:
        return jax.block_until_ready(cnn_forward_backward(params, x, state, g))

    rows = []
    for case, cand, refn in [
        ("CNN forward, batch 32, 3x32x32, f32, train", ours_forward, ref_forward),
        ("CNN forward+backward (jax.vjp), same", ours_backward, ref_backward),
    ]:
        c, r, ratio = compare(cand, refn, rounds=7)
        rows.append((case, c, r, ratio, TARGET))
    return rows


def cnn1d(params: Params, x: jax.Array, state: Params) -> tuple[jax.Array, Params]:
    """quickstart_cnn1d written by hand: Conv1d(k=5, padding=2), BatchNorm1d, ReLU, MaxPool1d(2), Linear."""
    h = lax.conv_general_dilated(x, params["conv1d_0.weight"], (1,), [(2, 2)], dimension_numbers=("NCH", "OIH", "NCH"))
    h = h + params["conv1d_0.bias"][:, None]
    h, mean, var = batch_norm(
        h,
        params["batchnorm1d_0.weight"],
        params["batchnorm1d_0.bias"],
        state["batchnorm1d_0.running_mean"],
        state["batchnorm1d_0.running_var"],
    )
    h = lax.reduce_window(jax.nn.relu(h), -jnp.inf, lax.max, (1, 1, 2), (1, 1, 2), "VALID")
    h = jnp.reshape(h, (h.shape[0], -1))
    out = h @ params["linear_0.weight"].T + params["linear_0.bias"]
    return out, {"batchnorm1d_0.running_mean": mean, "batchnorm1d_0.running_var": var}


@jax.jit
def cnn1d_forward(params: Params, x: jax.Array, state: Params) -> tuple[jax.Array, Params]:
    """Hand-written jitted 1-D CNN forward pass in training mode."""
    return cnn1d(params, x, state)


@jax.jit
def cnn1d_forward_backward(params: Params, x: jax.Array, state: Params, g: jax.Array) -> tuple[Any, ...]:
    """Hand-written jitted 1-D CNN logits, parameter gradients (via jax.vjp) and new running statistics."""
    out, pullback, new_state = jax.vjp(lambda p: cnn1d(p, x, state), params, has_aux=True)
    (grads,) = pullback(g)
    return out, grads, new_state


def cnn1d_rows() -> list[Row]:
    """quickstart_cnn1d, training mode, batch 32, 4x64, float32, jit."""
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn1d(), backend, shapes={"input": [32, 4, 64]}, jit=True)
    params = compiled.randomize_params(seed=0)
    state = compiled.initial_state()
    x, g = backend.randn(32, 4, 64), backend.randn(32, 10)
    inputs, grads_in = {"input": x}, {"output": g}

    ours = compiled.apply(params, inputs, state, grads_in)
    ref = cnn1d_forward_backward(params, x, state, g)
    assert jnp.allclose(ours[0]["output"], ref[0], rtol=1e-4, atol=1e-4), "1-D CNN forward results differ"
    assert all(jnp.allclose(ours[1][k], ref[1][k], rtol=1e-3, atol=1e-4) for k in params), "1-D CNN gradients differ"
    assert all(jnp.allclose(ours[2][k], ref[2][k], rtol=1e-5, atol=1e-6) for k in state), "1-D CNN state differs"

    def ours_forward() -> Any:
        return jax.block_until_ready(compiled.evaluate(params, inputs))

    def ref_forward() -> Any:
        return jax.block_until_ready(cnn1d_forward(params, x, state))

    def ours_backward() -> Any:
        return jax.block_until_ready(compiled.evaluate(params, inputs, grads_in))

    def ref_backward() -> Any:
        return jax.block_until_ready(cnn1d_forward_backward(params, x, state, g))

    rows = []
    for case, cand, refn in [
        ("1-D CNN forward, batch 32, 4x64, f32, train", ours_forward, ref_forward),
        ("1-D CNN forward+backward (jax.vjp), same", ours_backward, ref_backward),
    ]:
        c, r, ratio = compare(cand, refn, rounds=7)
        rows.append((case, c, r, ratio, TARGET))
    return rows


def mlp_rows() -> list[Row]:
    """The quick-start MLP, batch 32, 20 -> 64 -> 10, float32, jit."""
    model = quickstart_mlp()
    backend = ml.JaxBackend(dtype=ml.float32)
    compiled = ml.compile(model, backend, shapes={"input": [32, 20]}, jit=True)
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 20)
    g = backend.randn(32, 10)
    inputs, grads_in = {"input": x}, {"output": g}

    def ours_forward() -> Any:
        return compiled.evaluate(params, inputs)["output"].block_until_ready()

    def ref_forward() -> Any:
        return forward(params, x).block_until_ready()

    def ours_backward() -> Any:
        return jax.block_until_ready(compiled.evaluate(params, inputs, grads_in))

    def ref_backward() -> Any:
        return jax.block_until_ready(forward_backward(params, x, g))

    ours = compiled.evaluate(params, inputs, grads_in)
    ref = forward_backward(params, x, g)
    assert jnp.allclose(ours[0]["output"], ref[0], atol=1e-5), "forward results differ"
    assert all(jnp.allclose(ours[1][k], ref[1][k], atol=1e-5) for k in params), "gradients differ"

    rows = []
    for case, cand, refn in [
        ("forward, batch 32, 20->64->10, f32, jit", ours_forward, ref_forward),
        ("forward+backward (jax.vjp), same", ours_backward, ref_backward),
    ]:
        c, r, ratio = compare(cand, refn, rounds=9)
        rows.append((case, c, r, ratio, TARGET))
    return rows


def main() -> None:
    """Time both sides and print the table."""
    rows = mlp_rows() + cnn_rows() + cnn1d_rows()
    print_table(f"JAX backend vs hand-written jax.jit ({jax.devices()[0].platform}, jax {jax.__version__})", rows)


if __name__ == "__main__":
    main()
