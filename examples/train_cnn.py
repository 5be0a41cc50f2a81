"""Train the quick start CNN with CrossEntropyLoss on a synthetic image task, on any backend.

Each 3x16x16 image holds noise plus a bright 4x4 patch at one of ten positions;
the class is the position. Run: python examples/train_cnn.py --backend numpy
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mithril as ml
from mithril.models import CrossEntropyLoss, Model
from mithril.testing.models import quickstart_cnn

POSITIONS = [(r, c) for r in (0, 4, 8, 12) for c in (0, 6, 12)][:10]


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 3, 16, 16] and labels [n]: the label is where the bright patch sits."""
    labels = rng.integers(0, 10, n)
    images = rng.normal(0.0, 0.5, (n, 3, 16, 16))
    for i, label in enumerate(labels):
        r, c = POSITIONS[label]
        images[i, :, r : r + 4, c : c + 4] += 2.0
    return images.astype(np.float32), labels


def training_model() -> Model:
    """The CNN followed by its loss; outputs 'loss' and 'logits'."""
    model = Model()
    model |= quickstart_cnn()(input="input", output="logits")
    model |= CrossEntropyLoss()(input="logits", target="target", output="loss")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="numpy", help="numpy, torch, jax, ... (any installed backend)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    backend = ml.backend(args.backend, dtype=ml.float32)
    backend.set_seed(0)
    rng = np.random.default_rng(0)
    batch = 32
    train = ml.compile(training_model(), backend, shapes={"input": [batch, 3, 16, 16]}, outputs=["loss", "logits"])
    infer = ml.compile(
        training_model(), backend, shapes={"input": [256, 3, 16, 16]}, outputs=["logits"], inference=True
    )
    params = train.randomize_params()
    test_x, test_y = make_data(256, np.random.default_rng(1))

    def accuracy() -> float:
        infer.state = train.state if train.state is not None else infer.initial_state()
        logits = backend.to_numpy(infer.evaluate(params, {"input": backend.array(test_x)})["logits"])
        return float((logits.argmax(axis=1) == test_y).mean())

    print(f"backend {backend!r}; chance accuracy 0.10; before training {accuracy():.2f}")
    one = backend.ones()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = make_data(batch, rng)
        inputs = {"input": backend.array(x), "target": backend.array(y)}
        outputs, grads = train.evaluate(params, inputs, {"loss": one})
        params = {k: params[k] - args.lr * grads[k] for k in params}
        if step % 25 == 0:
            loss = float(backend.to_numpy(outputs["loss"]))
            print(f"step {step:4d}  loss {loss:.3f}  test accuracy {accuracy():.2f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s; final test accuracy {accuracy():.2f}")


if __name__ == "__main__":
    main()
