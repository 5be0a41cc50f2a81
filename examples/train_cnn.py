"""Train the quick start CNN with ml.Trainer on a synthetic image task, on any backend.

Each 3x16x16 image holds noise plus a bright 4x4 patch at one of ten positions;
the class is the position. Run: python examples/train_cnn.py --backend numpy
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mithril as ml
from mithril.models import BatchNorm2d, Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d, Model, Relu

POSITIONS = [(r, c) for r in (0, 4, 8, 12) for c in (0, 6, 12)][:10]


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 3, 16, 16] and labels [n]: the label is where the bright patch sits."""
    labels = rng.integers(0, 10, n)
    images = rng.normal(0.0, 0.5, (n, 3, 16, 16))
    for i, label in enumerate(labels):
        r, c = POSITIONS[label]
        images[i, :, r : r + 4, c : c + 4] += 2.0
    return images.astype(np.float32), labels


def cnn() -> Model:
    """The quick start's CNN: two Conv2d-BatchNorm2d-ReLU-MaxPool2d blocks, then two Linear layers."""
    model = Model()
    model |= Conv2d(in_channels=3, out_channels=16, kernel_size=3, padding=1)(input="input", output="conv1")
    model += BatchNorm2d(num_features=16)(input="conv1", output="bn1")
    model += Relu()(input="bn1", output="relu1")
    model += MaxPool2d(kernel_size=2)(input="relu1", output="pool1")
    model += Conv2d(in_channels=16, out_channels=32, kernel_size=3, padding=1)(input="pool1", output="conv2")
    model += BatchNorm2d(num_features=32)(input="conv2", output="bn2")
    model += Relu()(input="bn2", output="relu2")
    model += MaxPool2d(kernel_size=2)(input="relu2", output="pool2")
    model += Flatten()(input="pool2", output="flat")
    model += Linear(dimension=128)(input="flat", output="fc1")
    model += Relu()(input="fc1", output="relu3")
    model += Linear(dimension=10)(input="relu3", output="output")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="numpy", help="numpy, torch, jax, ... (any installed backend)")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    backend = ml.backend(args.backend, dtype=ml.float32)
    trainer = ml.Trainer(
        cnn(), backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=args.lr), metrics=["accuracy"],
        shapes={"input": [None, 3, 16, 16]},
    )  # fmt: skip
    state = trainer.init(seed=0)
    train = make_data(args.samples, np.random.default_rng(0))
    test = make_data(256, np.random.default_rng(1))
    print(f"backend {backend!r}; chance accuracy 0.10; before training {trainer.evaluate(state, test)['accuracy']:.2f}")
    start = time.perf_counter()
    state, history = trainer.fit(state, train, epochs=args.epochs, batch_size=32, validation_data=test)
    for epoch, (loss, accuracy) in enumerate(zip(history["loss"], history["val_accuracy"]), 1):
        print(f"epoch {epoch}  loss {loss:.3f}  test accuracy {accuracy:.2f}")
    print(f"{state.step} steps in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
