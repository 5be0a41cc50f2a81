"""Runs mesh_cases.py in a fresh process with 8 emulated CPU devices (XLA_FLAGS must precede jax)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_mesh_cases_on_eight_cpu_devices() -> None:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "mesh_cases.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
