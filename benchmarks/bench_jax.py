"""Per-call cost of the compiled quick-start MLP on JAX against hand-written jax.jit code.

Both sides run jitted float32 code for batch 32, 20 -> 64 -> 10 and block until the
results are ready; the ratio is Mithril's time over the hand-written time (9 interleaved rounds,
because a shared machine makes single rounds noisy).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import mithril as ml
from mithril.models import Linear, Model, Relu

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


def main() -> None:
    """Time both sides and print the table."""
    model = Model()
    model |= Linear(dimension=64)
    model += Relu()
    model += Linear(dimension=10)
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
    print_table(f"JAX backend vs hand-written jax.jit ({jax.devices()[0].platform}, jax {jax.__version__})", rows)


if __name__ == "__main__":
    main()
