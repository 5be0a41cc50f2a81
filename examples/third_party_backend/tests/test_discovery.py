"""The tracer is found only through its `mithril.backends` entry point, never by the core itself."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mithril

PLUGIN_ENV = ("MITHRIL_PLUGINS", "MITHRIL_DISABLE_PLUGIN_AUTOLOAD")


def _run(code: str, **env: str) -> str:
    """stdout of `python -c code` in a fresh process with only the given plugin variables."""
    full_env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV} | env
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_entry_point_belongs_to_the_mithril_tracer_distribution() -> None:
    (ep,) = [ep for ep in metadata.entry_points(group="mithril.backends") if ep.name == "tracer"]
    assert ep.value == "mithril_tracer.plugin"
    assert ep.dist is not None and ep.dist.name == "mithril-tracer"


def test_allowlisted_it_is_listed_with_its_distribution_and_loads_lazily() -> None:
    code = """
import sys
import mithril as ml
info = ml.available_backends()["tracer"]
assert "mithril_tracer.backend" not in sys.modules, "listing backends must not import the backend"
backend = ml.TracerBackend()
print(sorted(ml.available_backends()), info.distribution, info.attr, type(backend).__module__)
"""
    assert _run(code, MITHRIL_PLUGINS="tracer") == "['tracer'] mithril-tracer TracerBackend mithril_tracer.backend"


def test_with_autoloading_disabled_it_is_absent() -> None:
    code = """
import mithril as ml
assert "tracer" not in ml.available_backends()
try:
    ml.TracerBackend
except ml.BackendNotFoundError as exc:
    print("not found:", exc)
"""
    assert _run(code, MITHRIL_DISABLE_PLUGIN_AUTOLOAD="1").startswith("not found:")


def test_registered_by_hand_it_works_without_autoloading() -> None:
    code = """
import mithril as ml
import mithril_tracer.plugin
ml.register_plugin(mithril_tracer.plugin)
print(type(ml.backend("tracer")).__name__)
"""
    assert _run(code, MITHRIL_DISABLE_PLUGIN_AUTOLOAD="1") == "TracerBackend"


def test_the_core_never_names_the_tracer() -> None:
    core = Path(mithril.__file__).parent
    for path in core.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("mithril_tracer", "mithril-tracer", "TracerBackend"):
            assert name not in text, f"{path} names the third-party backend ({name})"
