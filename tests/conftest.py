"""Shared fixtures of the cross-package tests: a clean Python subprocess runner; puts this directory on sys.path.

The path matters under --import-mode=importlib, where the test modules would not otherwise find zoo_support.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

PLUGIN_ENV = ("MITHRIL_PLUGINS", "MITHRIL_DISABLE_PLUGIN_AUTOLOAD")

RunPython = Callable[..., subprocess.CompletedProcess[str]]


def _run_python(
    code: str, env: Mapping[str, str] | None = None, check: bool = True, flags: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `python *flags -c code` fresh, with no plugin variables but those in `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, env=full_env, timeout=300, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"subprocess failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def run_python() -> RunPython:
    """`run_python(code, env=None, check=True, flags=())`: the CompletedProcess of `python -c code`."""
    return _run_python
