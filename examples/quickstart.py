"""The quick start's MLP, compiled for NumPy and trained with plain SGD on synthetic data.

Run from the repository root after installing the core and the NumPy plugin:

    python -m pip install ./packages/mithril-core ./packages/mithril-numpy
    python examples/quickstart.py
"""

from __future__ import annotations

import time

import mithril as ml
from mithril.models import Linear, Model, Relu

BATCH, IN_DIM, OUT_DIM = 32, 20, 10
NUM_SAMPLES, EPOCHS, LEARNING_RATE = 1024, 10, 0.05


def main() -> None:
    """Define, compile and train the two-layer MLP, printing the mean loss of each epoch."""
    start = time.perf_counter()

    model = Model()
    model |= Linear(dimension=64)
    model += Relu()
    model += Linear(dimension=10)

    backend = ml.NumpyBackend(dtype=ml.float32)
    backend.set_seed(0)
    compiled = ml.compile(model=model, backend=backend, shapes={"input": [BATCH, IN_DIM]})
    params = compiled.randomize_params(seed=0)

    # Targets from a random linear "teacher" plus a little noise: the MLP can fit them.
    x = backend.randn(NUM_SAMPLES, IN_DIM)
    teacher = backend.randn(IN_DIM, OUT_DIM)
    y = backend.matmul(x, teacher) + 0.1 * backend.randn(NUM_SAMPLES, OUT_DIM)

    num_batches = NUM_SAMPLES // BATCH
    for epoch in range(EPOCHS):
        total_loss = 0.0
        for i in range(num_batches):
            inputs = {"input": x[i * BATCH : (i + 1) * BATCH]}
            targets = y[i * BATCH : (i + 1) * BATCH]

            predictions = compiled.evaluate(params, inputs)["output"]
            diff = predictions - targets
            total_loss += float(backend.mean(diff * diff))

            # d(mean squared error)/d(output), then parameter gradients from the model.
            output_gradients = {"output": 2 * diff / diff.size}
            _, gradients = compiled.evaluate(params, inputs, output_gradients)
            for name, grad in gradients.items():
                params[name] = params[name] - LEARNING_RATE * grad

        print(f"Epoch {epoch + 1}/{EPOCHS}, Loss: {total_loss / num_batches:.4f}")

    print(f"done in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
