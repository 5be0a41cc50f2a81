"""Puts this directory on sys.path so the test modules (and mesh_cases.py) share jax_test_helpers; shared fixtures."""

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import pytest

import mithril as ml
from mithril.backend import Kernel

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def counting_relu() -> Iterator[list[int]]:
    """An op pack that swaps the jax relu for one that counts its (trace-time) calls."""
    traces = [0]

    def relu(x: jax.Array) -> jax.Array:
        traces[0] += 1
        return jax.nn.relu(x)

    class Pack:
        @ml.hookimpl
        def mithril_register_ops(self, backend_name: str, register: Any) -> None:
            if backend_name == "jax":
                register("relu", Kernel(relu))

    pack = Pack()
    ml.register_plugin(pack, "counting-relu")
    yield traces
    from mithril.plugins import registry

    registry.manager.unregister(pack)
