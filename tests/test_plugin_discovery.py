"""Plugin discovery: installed plugins are listed with their distribution, hand-registered
plugins show up, and a plugin that fails to import is reported without breaking the others.

Each check runs in a fresh interpreter, since the registry loads entry points once per process.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

RunPython = Callable[..., subprocess.CompletedProcess[str]]

LIST_BACKENDS = """
import json, mithril as ml
print(json.dumps({name: vars(info) for name, info in ml.available_backends().items()}))
"""


def _installed_entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group="mithril.backends"))


def test_available_backends_lists_installed_plugins_with_distribution(run_python: RunPython) -> None:
    entry_points = _installed_entry_points()
    if not entry_points:
        pytest.skip("no Mithril plugin is installed")
    listed = json.loads(run_python(LIST_BACKENDS).stdout)
    for ep in entry_points:
        infos = [info for info in listed.values() if info["plugin"] == ep.name]
        assert infos, f"plugin {ep.name!r} ({ep.value}) is installed but not listed: {sorted(listed)}"
        for info in infos:
            assert info["error"] is None, info
            assert info["distribution"] == ep.dist.name
            assert info["version"] == ep.dist.version


FAKE_PLUGIN = """
import numpy as np

import mithril as ml
from mithril.host_arrays import HostArrays

class FakeBackend(HostArrays, ml.Backend):
    name = "fake"

    def __init__(self, dtype=ml.float32, device="cpu"):
        super().__init__(dtype, device)
        self._rng = np.random.default_rng()

    def lower(self, graph, options):
        raise ml.UnsupportedError("the fake backend compiles nothing")

class FakePlugin:
    @ml.hookimpl
    def mithril_register_backends(self, register):
        register("fake", FakeBackend, attr="FakeBackend")

ml.register_plugin(FakePlugin(), name="fake-plugin")
info = ml.available_backends()["fake"]
assert (info.plugin, info.attr, info.error) == ("fake-plugin", "FakeBackend", None), info
assert ml.FakeBackend is FakeBackend
backend = ml.backend("fake", dtype="float64")
assert isinstance(backend, FakeBackend) and backend.dtype == ml.float64, backend
print("ok")
"""


@pytest.mark.parametrize("autoload", ["on", "disabled"])
def test_hand_registered_plugin_shows_up(run_python: RunPython, autoload: str) -> None:
    env = {"MITHRIL_DISABLE_PLUGIN_AUTOLOAD": "1"} if autoload == "disabled" else {}
    assert run_python(FAKE_PLUGIN, env=env).stdout.strip() == "ok"


def _broken_plugin(root: Path) -> None:
    """A distribution `broken-plugin` 0.1 on `root` whose `mithril.backends` entry point fails to import."""
    dist_info = root / "broken_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[mithril.backends]\nbroken = broken_plugin\n")
    (root / "broken_plugin.py").write_text('raise ImportError("broken_plugin needs libfoo, which is missing")\n')


def test_plugin_that_fails_to_import_is_reported_and_others_still_work(run_python: RunPython, tmp_path: Path) -> None:
    _broken_plugin(tmp_path)
    working = sorted({ep.name for ep in _installed_entry_points()})
    code = textwrap.dedent(
        f"""
        import mithril as ml
        info = ml.available_backends()["broken"]
        assert (info.distribution, info.version) == ("broken-plugin", "0.1"), info
        assert "ImportError" in info.error and "libfoo" in info.error, info.error
        try:
            ml.backend("broken")
        except ml.BackendNotFoundError as exc:
            assert "failed to load" in str(exc) and "libfoo" in str(exc), exc
        else:
            raise AssertionError("ml.backend('broken') did not raise")
        for name in {working!r}:
            assert ml.available_backends()[name].error is None, name
            ml.backend(name)
        print("ok")
        """
    )
    assert run_python(code, env={"PYTHONPATH": str(tmp_path)}).stdout.strip() == "ok"


INCOMPLETE_BACKEND = """
import mithril as ml

class Incomplete(ml.Backend):
    name = "incomplete"

try:
    Incomplete()
except TypeError as exc:
    print("refused:", "lower" in str(exc) and "randn" in str(exc))
"""


def test_a_backend_missing_part_of_the_contract_cannot_be_created(run_python: RunPython) -> None:
    assert run_python(INCOMPLETE_BACKEND).stdout.strip() == "refused: True"
