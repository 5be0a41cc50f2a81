"""The compile option `precision` (issue 13): float32 matmuls and convolutions at full precision by default.

On CPU the option's effect is checked where it lands: the precision every dot and convolution of
the traced forward and backward carries. On a GPU the quick start CNN's float32 output is compared
with a float64 reference.
"""

from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np
import pytest

import mithril as ml
from mithril.testing.models import quickstart_cnn

NO_GPU = pytest.mark.skipif(jax.default_backend() != "gpu", reason="jax finds no GPU: GPU-only precision check")
LABEL = {
    "highest": "precision=(Precision.HIGHEST, Precision.HIGHEST)",
    "high": "precision=(Precision.HIGH, Precision.HIGH)",
}


def _traced(precision: str | None) -> str:
    """The jaxpr of one forward+backward call of the quick start CNN compiled with `precision`."""
    backend = ml.JaxBackend()
    options = {} if precision is None else {"precision": precision}
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [2, 3, 32, 32]}, **options)
    params, state = compiled.randomize_params(seed=0), compiled.initial_state()
    x, g = {"input": backend.randn(2, 3, 32, 32)}, {"output": backend.ones(2, 10)}
    return str(jax.make_jaxpr(lambda p: compiled.apply(p, x, state, g))(params))


@pytest.mark.parametrize("precision", [None, "highest", "high"])
def test_every_dot_and_convolution_carries_the_precision(precision: str | None) -> None:
    text = _traced(precision)
    ops = text.count("dot_general[") + text.count("conv_general_dilated[")
    assert ops >= 8  # 2 convolutions and 2 linear layers, forward and backward
    assert text.count(LABEL[precision or "highest"]) == ops, text


def test_default_leaves_jax_its_own_setting() -> None:
    text = _traced("default")
    assert "Precision.HIGH" not in text and "Precision.DEFAULT" not in text


@pytest.mark.parametrize("value", ["fast", "HIGHEST", 3, None])
def test_a_bad_precision_is_refused_naming_the_choices(value: Any) -> None:
    with pytest.raises(
        TypeError, match=r"option 'precision' must be Literal\['highest', 'high', 'default'\], got " + repr(value)
    ):
        ml.compile(quickstart_cnn(), ml.JaxBackend(), precision=value)


def test_the_option_survives_pickling() -> None:
    compiled = ml.compile(quickstart_cnn(), ml.JaxBackend(), shapes={"input": [1, 3, 32, 32]}, precision="high")
    assert pickle.loads(pickle.dumps(compiled)).options.backend.precision == "high"
    assert ml.compile(quickstart_cnn(), ml.JaxBackend()).options.backend.precision == "highest"


def _relative_error(precision: str) -> float:
    """The quick start CNN's float32 output on the GPU against float64 on the CPU, relative to its size."""
    reference_backend = ml.NumpyBackend(dtype=ml.float64)
    reference = ml.compile(quickstart_cnn(), reference_backend, shapes={"input": [32, 3, 32, 32]})
    params = reference.randomize_params(seed=0)
    state = reference.initial_state()
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32))
    want = reference.apply(params, {"input": x}, state)[0]["output"]
    backend = ml.JaxBackend(device="gpu")
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [32, 3, 32, 32]}, precision=precision)
    moved = {k: backend.array(v) for k, v in params.items()}
    got = compiled.apply(moved, {"input": backend.array(x)}, {k: backend.array(v) for k, v in state.items()})[0]
    return float(np.max(np.abs(np.asarray(got["output"], np.float64) - want)) / np.max(np.abs(want)))


@NO_GPU
def test_float32_is_full_precision_on_the_gpu_by_default() -> None:
    assert _relative_error("highest") < 1e-5


@NO_GPU
def test_high_and_default_allow_the_faster_kernels() -> None:
    highest = _relative_error("highest")
    assert _relative_error("high") > highest
    assert _relative_error("default") > highest
