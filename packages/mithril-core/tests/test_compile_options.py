"""Typed compile options: core options checked once, backend options declared by the backend class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.backend import BackendOptions, CompileOptions
from mithril.graph import Graph
from mithril.testing.models import quickstart_mlp
from mithril_numpy.lowering import NumpyProgram

SHAPES = {"input": [4, 20]}


@dataclass(frozen=True)
class TunedOptions(BackendOptions):
    """Options of the test backend: one int, one optional string."""

    unroll: int = 1
    schedule: str | None = None


class TunedBackend(ml.NumpyBackend):
    """NumPy with declared compile options; records what `lower` was handed."""

    compile_options_type = TunedOptions

    def __init__(self) -> None:
        super().__init__()
        self.lowered: list[CompileOptions] = []

    def lower(self, graph: Graph, options: CompileOptions) -> NumpyProgram:
        self.lowered.append(options)
        return super().lower(graph, options)


def test_static_inference_runs_like_a_normal_compile_and_refuses_gradients() -> None:
    backend = ml.NumpyBackend()
    static = ml.compile(quickstart_mlp(), backend, shapes=SHAPES, static_inference=True)
    normal = ml.compile(quickstart_mlp(), backend, shapes=SHAPES)
    assert static.options.static_inference and static.options.inference
    assert "forward_backward" not in static.code
    params, x = normal.randomize_params(seed=0), {"input": backend.randn(4, 20)}
    np.testing.assert_array_equal(static.evaluate(params, x)["output"], normal.evaluate(params, x)["output"])
    with pytest.raises(ml.UnsupportedError, match="compiled for inference only"):
        static.evaluate(params, x, {"output": backend.ones(4, 10)})


@pytest.mark.parametrize("shapes", [None, {"input": [4, None]}, {"input": [None, 20]}])
def test_static_inference_without_fixed_shapes_runs_any_batch(shapes: dict[str, Any] | None) -> None:
    """The quick start compiles its deployment model with static_inference and no shapes."""
    backend = ml.NumpyBackend()
    static = ml.compile(quickstart_mlp(), backend, shapes=shapes, static_inference=True)
    normal = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]})
    params = normal.randomize_params(seed=0)
    for batch in (4, 4, 7) if shapes is None or shapes["input"][0] is None else (4,):
        x = {"input": backend.randn(batch, 20)}
        expected = normal.evaluate(params, {"input": x["input"][:4]})["output"] if batch == 4 else None
        out = static.evaluate(params, x)["output"]
        assert out.shape == (batch, 10)
        if expected is not None:
            np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("jit", "yes", "bool"),
        ("inference", 1, "bool"),
        ("static_inference", "no", "bool"),
        ("file_path", 3, r"str \| None"),
    ],
)
def test_wrongly_typed_core_options_name_option_type_and_value(option: str, value: Any, expected: str) -> None:
    pattern = rf"ml.compile: option '{option}' must be {expected}, got {value!r} \({type(value).__name__}\)"
    with pytest.raises(TypeError, match=pattern):
        ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes=SHAPES, **{option: value})
    with pytest.raises(TypeError, match=pattern):
        CompileOptions(**{option: value})


def test_unknown_option_lists_the_backends_and_the_core_options() -> None:
    with pytest.raises(TypeError) as error:
        ml.compile(quickstart_mlp(), ml.NumpyBackend(), static_inferance=True)
    message = str(error.value)
    assert "unknown option(s) ['static_inferance'] for backend 'numpy'; it has no options of its own" in message
    assert "static_inference" in message


def test_declared_backend_options_are_checked_before_lowering_and_handed_over_typed() -> None:
    backend = TunedBackend()
    with pytest.raises(TypeError, match=r"\['fuse'\] for backend 'numpy'; valid options are \['unroll', 'schedule'\]"):
        ml.compile(quickstart_mlp(), backend, fuse=True)
    with pytest.raises(TypeError, match=r"option 'unroll' must be int, got '4' \(str\)"):
        ml.compile(quickstart_mlp(), backend, unroll="4")
    assert backend.lowered == []
    ml.compile(quickstart_mlp(), backend, shapes=SHAPES, unroll=4)
    assert backend.lowered[-1].backend == TunedOptions(unroll=4, schedule=None)
    ml.compile(quickstart_mlp(), backend)
    assert backend.lowered[-1].backend == TunedOptions()
