"""Per-call cost of the quick start MLP and CNN compiled by Mithril against the same networks in Keras 3.

Both run on the same framework in one process: `python benchmarks/keras_models.py --backend torch`
sets KERAS_BACKEND=torch before Keras is imported and compiles Mithril for ml.TorchBackend.
Keras is called the fastest normal way for each framework: torch, a direct `model(x)` call
(under no_grad for the forward rows) and torch.autograd.grad on the trainable weights; jax, a
jax.jit-compiled `model.stateless_call` and jax.vjp; numpy, a direct `model(x)` call (Keras's
NumPy backend has no gradients, so it has forward rows only). Images are channels-first on both
sides; the CNN runs in training mode (batch statistics) on both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402

Row = tuple[str, float, float, float, "float | None"]
BACKENDS = ("numpy", "torch", "jax")
MLP_SHAPE = (32, 20)
CNN_SHAPE = (32, 3, 32, 32)
TIMING: dict[str, Any] = {"min_time": 0.3, "rounds": 9}


def keras_mlp(keras: Any) -> Any:
    """The quick start MLP 20-64-10 as a Keras Sequential model."""
    return keras.Sequential(
        [
            keras.Input(shape=MLP_SHAPE[1:]),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def keras_cnn(keras: Any) -> Any:
    """The quick start CNN as a channels-first Keras Sequential model."""
    layers, fmt = keras.layers, "channels_first"

    def conv_block(channels: int) -> list[Any]:
        return [
            layers.Conv2D(channels, 3, padding="same", data_format=fmt),
            layers.BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5),
            layers.ReLU(),
            layers.MaxPooling2D(2, data_format=fmt),
        ]

    return keras.Sequential(
        [
            keras.Input(shape=CNN_SHAPE[1:]),
            *conv_block(16),
            *conv_block(32),
            layers.Flatten(data_format=fmt),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ]
    )


def _mithril_models() -> dict[str, tuple[Any, tuple[int, ...], tuple[int, ...]]]:
    """The Mithril quick start MLP and CNN with their input and output shapes."""
    from mithril.testing.models import quickstart_cnn, quickstart_mlp

    return {"MLP": (quickstart_mlp(), MLP_SHAPE, (32, 10)), "CNN": (quickstart_cnn(), CNN_SHAPE, (32, 10))}


def _keras_calls(backend: str, model: Any, x: Any, g: Any) -> tuple[Callable[[], Any], Any]:
    """(forward, forward+backward or None) closures calling `model` the fastest normal way for `backend`."""
    if backend == "torch":
        import torch

        weights = [v.value for v in model.trainable_weights]

        def torch_forward() -> Any:
            with torch.no_grad():
                return model(x, training=True)

        def torch_backward() -> Any:
            out = model(x, training=True)
            return out.detach(), torch.autograd.grad((out,), weights, (g,))

        return torch_forward, torch_backward
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        state = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def forward(tv: Any, ntv: Any, inputs: Any) -> Any:
            return model.stateless_call(tv, ntv, inputs, training=True)

        @jax.jit
        def forward_backward(tv: Any, ntv: Any, inputs: Any, cotangent: Any) -> Any:
            out, pullback, new_state = jax.vjp(
                lambda t: model.stateless_call(t, ntv, inputs, training=True), tv, has_aux=True
            )
            return out, pullback(cotangent)[0], new_state

        return (
            lambda: jax.block_until_ready(forward(trainable, state, x)),
            lambda: jax.block_until_ready(forward_backward(trainable, state, x, g)),
        )
    return (lambda: model(x, training=True)), None


def _mithril_calls(
    backend: str, compiled: Any, params: Any, inputs: Any, grads: Any
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) closures evaluating the compiled Mithril model, waiting for JAX's results."""
    if backend == "jax":
        import jax

        return (
            lambda: jax.block_until_ready(compiled.evaluate(params, inputs)),
            lambda: jax.block_until_ready(compiled.evaluate(params, inputs, grads)),
        )
    return (lambda: compiled.evaluate(params, inputs)), (lambda: compiled.evaluate(params, inputs, grads))


def rows(backend: str) -> list[Row]:
    """Mithril against Keras 3 on `backend` for the quick start MLP and CNN, forward and forward+backward."""
    import keras

    import mithril as ml

    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    mbackend = getattr(ml, ml.available_backends()[backend].attr)(dtype=ml.float32)
    keras_models = {"MLP": keras_mlp(keras), "CNN": keras_cnn(keras)}
    result: list[Row] = []
    for name, (model, in_shape, out_shape) in _mithril_models().items():
        compiled = ml.compile(model, mbackend, shapes={"input": list(in_shape)})
        params = compiled.randomize_params(seed=0)
        x, g = mbackend.randn(*in_shape), mbackend.ones(*out_shape)
        inputs, grads = {"input": x}, {"output": g}
        keras_forward, keras_backward = _keras_calls(backend, keras_models[name], x, g)
        ours_forward, ours_backward = _mithril_calls(backend, compiled, params, inputs, grads)
        label = f"{name} {'x'.join(map(str, in_shape))}"
        result.append((f"{label}: forward", *compare(ours_forward, keras_forward, **TIMING), 1.0))
        if keras_backward is not None:
            result.append((f"{label}: forward+backward", *compare(ours_backward, keras_backward, **TIMING), 1.0))
    return result


def run(backend: str) -> dict[str, Any]:
    """Rows for one backend, or why they were skipped, as a JSON-ready dict."""
    if importlib.util.find_spec("keras") is None:
        return {"backend": backend, "skipped": "keras is not installed"}
    import keras

    return {"backend": backend, "keras": keras.__version__, "rows": rows(backend)}


def main() -> None:
    """Command line: one framework per process, table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    result = run(args.backend)
    if args.json:
        print(json.dumps(result))
    elif "skipped" in result:
        print(f"Keras rows skipped on {args.backend}: {result['skipped']}")
    else:
        print_table(f"Mithril vs Keras {result['keras']} on {args.backend} (ratio < 1: Mithril faster)", result["rows"])


if __name__ == "__main__":
    main()
