"""Puts this directory on sys.path so the test modules (and mesh_cases.py) share jax_test_helpers."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
