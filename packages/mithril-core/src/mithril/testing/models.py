"""The quick start's models, exactly as the quick start writes them, for tests and benchmarks."""

from __future__ import annotations

from ..models import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Model, Relu

__all__ = ["quickstart_mlp", "quickstart_cnn"]


def quickstart_mlp() -> Model:
    """The two-layer MLP of the quick start: Linear(64), Relu, Linear(10)."""
    model = Model()
    model |= Linear(dimension=64)
    model += Relu()
    model += Linear(dimension=10)
    return model


def quickstart_cnn() -> Model:
    """The CNN of the quick start, written exactly as there."""
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
    return cnn
