"""A ResNet-18-sized CNN (11.7 M parameters, 2-2-2-2 basic blocks) built from the Mithril catalogue."""

from __future__ import annotations

from mithril.models import Add, BatchNorm2d, Conv2d, Linear, MaxPool2d, Mean, Model, Relu

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def basic_block(cin: int, cout: int, stride: int) -> Model:
    """Two 3x3 conv+BN layers plus the identity (or 1x1 conv+BN) shortcut, then Relu."""
    block = Model()
    block |= Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)(input="input", output="conv_a")
    block += BatchNorm2d(cout)(input="conv_a", output="bn_a")
    block += Relu()(input="bn_a", output="relu_a")
    block += Conv2d(cout, cout, 3, padding=1, bias=False)(input="relu_a", output="conv_b")
    block += BatchNorm2d(cout)(input="conv_b", output="bn_b")
    shortcut = "input"
    if stride != 1 or cin != cout:
        block |= Conv2d(cin, cout, 1, stride=stride, bias=False)(input="input", output="conv_s")
        block += BatchNorm2d(cout)(input="conv_s", output="bn_s")
        shortcut = "bn_s"
    block |= Add()(left="bn_b", right=shortcut, output="sum")
    block += Relu()(input="sum", output="output")
    return block


def resnet18(classes: int = 1000) -> Model:
    """ResNet-18: 7x7 stem, max pool, four stages of two basic blocks, global average pool, Linear."""
    model = Model()
    model |= Conv2d(3, 64, 7, stride=2, padding=3, bias=False)(input="input")
    model += BatchNorm2d(64)
    model += Relu()
    model += MaxPool2d(3, stride=2, padding=1)
    cin = 64
    for cout, stride in STAGES:
        model += basic_block(cin, cout, stride)
        model += basic_block(cout, cout, 1)
        cin = cout
    model += Mean(axis=(2, 3))
    model += Linear(dimension=classes)(output="output")
    return model
