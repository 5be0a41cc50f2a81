"""The compile option `precision` (issue 13): torch's TF32 flags set for a compiled model's CUDA calls only.

On CPU a backend that reports a CUDA device type (its tensors stay on the CPU) runs the switch, so
the tests see the flags an op reads during a call and that the user's flags are back after it.
On a GPU the quick start CNN's float32 output is compared with a float64 reference.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

import mithril as ml
from mithril.backend import Kernel
from mithril.plugins import registry
from mithril.testing.models import quickstart_cnn, quickstart_mlp
from mithril_torch.precision import SWITCH, tf32_settings

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU-only precision check")
DURING = {"highest": ("highest", False, "ieee", "none"), "high": ("high", True, "tf32", "tf32")}


class CudaTypedBackend(ml.TorchBackend):
    """A CPU torch backend that lowers as if its device were CUDA (so its calls switch the TF32 flags)."""

    device_type = "cuda"  # type: ignore[assignment]


@pytest.fixture
def seen() -> Iterator[list[tuple[Any, ...]]]:
    """An op pack whose relu records torch's TF32 flags each time it runs."""
    flags: list[tuple[Any, ...]] = []

    def relu(x: torch.Tensor) -> torch.Tensor:
        flags.append(tf32_settings())
        return torch.relu(x)

    class Pack:
        @ml.hookimpl
        def mithril_register_ops(self, backend_name: str, register: Any) -> None:
            if backend_name == "torch":
                register("relu", Kernel(relu))

    pack = Pack()
    ml.register_plugin(pack, "tf32-recorder")
    yield flags
    registry.manager.unregister(pack)


@pytest.fixture(autouse=True)
def restore_user_flags() -> Iterator[None]:
    """Each test may set the user's flags: put torch's defaults back afterwards."""
    yield
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True


def _call_both(precision: str | None) -> None:
    backend = CudaTypedBackend()
    options = {} if precision is None else {"precision": precision}
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]}, **options)
    params, x = compiled.randomize_params(seed=0), {"input": backend.randn(4, 20)}
    compiled.evaluate(params, x)
    compiled.evaluate(params, x, {"output": backend.ones(4, 10)})


@pytest.mark.parametrize("user", ["torch defaults", "legacy allow_tf32", "newer fp32_precision"])
@pytest.mark.parametrize("precision", [None, "highest", "high"])
def test_flags_are_set_during_calls_and_restored_after(seen: list[Any], precision: str | None, user: str) -> None:
    if user == "legacy allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif user == "newer fp32_precision":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    before = tf32_settings()
    _call_both(precision)
    assert seen and all(flags == DURING[precision or "highest"] for flags in seen), seen
    after = tf32_settings()
    assert after[2:] == before[2:] and (before[0] is None or after[:2] == before[:2])


def test_default_leaves_torch_its_own_flags(seen: list[Any]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    before = tf32_settings()
    _call_both("default")
    assert seen and all(flags == before for flags in seen)


def test_a_call_that_raises_restores_the_flags() -> None:
    backend = CudaTypedBackend()
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]})
    params = compiled.randomize_params(seed=0)
    before = tf32_settings()
    with pytest.raises(ml.ShapeError):
        compiled.evaluate(params, {"input": backend.randn(4, 20)}, {"output": backend.ones(4, 9)})
    assert tf32_settings() == before


def test_cpu_programs_switch_nothing() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.TorchBackend(), shapes={"input": [4, 20]}, precision="high")
    assert compiled.program.precision is None and "_fp32_enter" not in compiled.code


def test_concurrent_calls_of_both_precisions_each_see_their_own() -> None:
    errors: list[str] = []

    def call(i: int) -> None:
        precision = "highest" if i % 2 else "high"
        SWITCH.enter(precision)
        try:
            for _ in range(50):
                if tf32_settings() != DURING[precision]:
                    errors.append(f"{precision}: {tf32_settings()}")
        finally:
            SWITCH.exit()

    before = tf32_settings()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(64)))
    assert not errors and tf32_settings() == before


@pytest.mark.parametrize("value", ["fast", "HIGH", 1, None])
def test_a_bad_precision_is_refused_naming_the_choices(value: Any) -> None:
    with pytest.raises(
        TypeError, match=r"option 'precision' must be Literal\['highest', 'high', 'default'\], got " + repr(value)
    ):
        ml.compile(quickstart_mlp(), ml.TorchBackend(), precision=value)


def test_the_option_survives_pickling() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.TorchBackend(), shapes={"input": [1, 20]}, precision="high")
    assert pickle.loads(pickle.dumps(compiled)).options.backend.precision == "high"
    assert ml.compile(quickstart_mlp(), ml.TorchBackend()).options.backend.precision == "highest"


def _relative_error(precision: str) -> float:
    """The quick start CNN's float32 output on the GPU against float64 on the CPU, relative to its size."""
    reference_backend = ml.NumpyBackend(dtype=ml.float64)
    reference = ml.compile(quickstart_cnn(), reference_backend, shapes={"input": [32, 3, 32, 32]})
    params, state = reference.randomize_params(seed=0), reference.initial_state()
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32))
    want = reference.apply(params, {"input": x}, state)[0]["output"]
    backend = ml.TorchBackend(device="cuda")
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [32, 3, 32, 32]}, precision=precision)
    moved = {k: backend.array(v) for k, v in params.items()}
    got = compiled.apply(moved, {"input": backend.array(x)}, {k: backend.array(v) for k, v in state.items()})[0]
    return float(np.max(np.abs(backend.to_numpy(got["output"]).astype(np.float64) - want)) / np.max(np.abs(want)))


@CUDA
@pytest.mark.cuda
def test_float32_is_full_precision_on_cuda_by_default() -> None:
    before = tf32_settings()
    assert _relative_error("highest") < 1e-5
    assert tf32_settings() == before


@CUDA
@pytest.mark.cuda
def test_high_allows_tf32_kernels() -> None:
    assert _relative_error("high") > _relative_error("highest")
