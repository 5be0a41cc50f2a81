"""`import mithril` loads plugin metadata only: no framework, no plugin module, well under 0.5 s."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

RunPython = Callable[..., subprocess.CompletedProcess[str]]

LIMIT_S = 0.5
HEAVY = ("torch", "jax", "jaxlib", "ggml", "mithril_numpy", "mithril_torch", "mithril_jax", "mithril_ggml")
LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$")


def _import_profile(run_python: RunPython) -> dict[str, int]:
    """Cumulative microseconds of each module `import mithril` imported, from `-X importtime`."""
    proc = run_python("import mithril", flags=["-X", "importtime"])
    return {m[2]: int(m[1]) for line in proc.stderr.splitlines() if (m := LINE.match(line))}


def test_import_loads_no_framework_and_no_plugin(run_python: RunPython) -> None:
    imported = _import_profile(run_python)
    assert "mithril" in imported
    loaded = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert loaded == [], f"`import mithril` imported {loaded}"


def test_import_is_fast(run_python: RunPython) -> None:
    best = min(_import_profile(run_python)["mithril"] for _ in range(3)) / 1e6
    assert best < LIMIT_S, f"`import mithril` took {best:.3f} s (best of 3), limit {LIMIT_S} s"
