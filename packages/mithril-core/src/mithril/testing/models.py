"""The quick start's models, exactly as the quick start writes them, for tests and benchmarks."""

from __future__ import annotations

from ..models import (
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool1d,
    MaxPool2d,
    Model,
    ReLU,
    Relu,
)

__all__ = ["quickstart_mlp", "quickstart_cnn", "quickstart_cnn1d"]


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


def quickstart_cnn1d(in_channels: int = 4, channels: int = 16, classes: int = 10) -> Model:
    """A 1-D CNN over [N, in_channels, L]: Conv1d(k=5, padding=2), BatchNorm1d, ReLU, MaxPool1d(2), Flatten, Linear."""
    cnn = Model()
    cnn |= Conv1d(in_channels=in_channels, out_channels=channels, kernel_size=5, padding=2)(
        input="input", output="conv"
    )
    cnn += BatchNorm1d(num_features=channels)(input="conv", output="bn")
    cnn += ReLU()(input="bn", output="relu")
    cnn += MaxPool1d(kernel_size=2)(input="relu", output="pool")
    cnn += Flatten()(input="pool", output="flat")
    cnn += Linear(dimension=classes)(input="flat", output="output")
    return cnn
