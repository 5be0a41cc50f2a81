"""The quick start (shared/spec/quickstart.md) is the API contract: every Python block runs as
written, in order, in one namespace.

The "Multi-Backend Workflow" block asks for a TPU mesh: here it must fail with a clear error
about the missing TPU, and run with device="cpu" on 8 emulated XLA host devices.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mithril as ml

RunPython = Callable[..., subprocess.CompletedProcess[str]]

QUICKSTART = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "quickstart.md"
MULTI_BACKEND_MARK = 'ml.JaxBackend(device="tpu"'
TPU, CPU = 'device="tpu"', 'device="cpu"'
DEPLOY_MARK = "# Production phase"


def _blocks() -> list[str]:
    """Every ```python block, padded with blank lines so tracebacks give quickstart.md's line numbers."""
    if not QUICKSTART.is_file():
        pytest.skip(f"the quick start is not here: {QUICKSTART} (shared/ must sit beside the repository)")
    text = QUICKSTART.read_text()
    return [
        "\n" * text.count("\n", 0, match.start(1)) + match[1]
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    ]


def _require(*backends: str) -> None:
    """Skip, naming the plugin, unless every backend in `backends` is installed and loads."""
    available = ml.available_backends()
    for name in backends:
        info = available.get(name)
        if info is None:
            pytest.skip(f'the quick start needs the {name} backend: pip install "mithril[{name}]" (mithril-{name})')
        if info.error is not None:
            pytest.skip(f"the {name} plugin failed to load: {info.error}")


def _split() -> tuple[list[str], str]:
    """The blocks before the Multi-Backend Workflow block, and that block."""
    blocks = _blocks()
    index = next(i for i, block in enumerate(blocks) if MULTI_BACKEND_MARK in block)
    assert index == len(blocks) - 1, "the Multi-Backend Workflow block is expected to be the last one"
    return blocks[:index], blocks[index]


def test_quickstart_has_its_blocks() -> None:
    before, multi = _split()
    assert len(before) >= 7, f"expected the quick start's 8 Python blocks, found {len(before) + 1}"
    assert multi.count(TPU) == 1 and DEPLOY_MARK in multi


def test_every_block_runs_as_written() -> None:
    before, multi = _split()
    _require("torch", "jax")
    namespace: dict[str, Any] = {"__name__": "quickstart"}
    for block in before:
        exec(compile(block, str(QUICKSTART), "exec"), namespace)
    assert tuple(namespace["outputs"]["output"].shape) == (32, 10)
    assert tuple(namespace["jax_outputs"]["output"].shape) == (32, 10)
    assert tuple(namespace["numpy_outputs"]["output"].shape) == (32, 10)
    assert tuple(namespace["cnn_outputs"]["output"].shape) == (32, 10)

    with pytest.raises(Exception) as excinfo:  # noqa: B017 - the error type is the backend's choice
        exec(compile(multi, str(QUICKSTART), "exec"), namespace)
    assert "research_model" in namespace, f"the PyTorch line failed before the TPU line: {excinfo.value!r}"
    assert "scaling_model" not in namespace
    assert "tpu" in str(excinfo.value).lower(), f"the error does not mention the missing TPU: {excinfo.value!r}"


def _multi_backend_on_cpu(include_deploy: bool) -> str:
    """The model block plus the Multi-Backend Workflow block with device="cpu" for "tpu"."""
    blocks = _blocks()
    _, multi = _split()
    code = multi.replace(TPU, CPU)
    if not include_deploy:
        code = code[: code.index(DEPLOY_MARK)]
    compiled = ["research_model", "scaling_model", *(["deploy_model"] if include_deploy else [])]
    check = f"""
import jax
assert len(jax.devices()) == 8, jax.devices()
for compiled in [{", ".join(compiled)}]:
    assert isinstance(compiled, ml.CompiledModel), compiled
print("compiled", {len(compiled)})
"""
    return "\n".join([blocks[0], code, check])


CPU_MESH_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def test_multi_backend_block_compiles_on_an_8_device_cpu_mesh(run_python: RunPython) -> None:
    _require("torch", "jax")
    proc = run_python(_multi_backend_on_cpu(include_deploy=False), env=CPU_MESH_ENV)
    assert proc.stdout.strip().endswith("compiled 2"), proc.stdout


def test_multi_backend_block_with_ggml_deployment_on_cpu(run_python: RunPython) -> None:
    _require("torch", "jax", "ggml")
    proc = run_python(_multi_backend_on_cpu(include_deploy=True), env=CPU_MESH_ENV)
    assert proc.stdout.strip().endswith("compiled 3"), proc.stdout
