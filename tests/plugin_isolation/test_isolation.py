"""Each installed first-party plugin works on its own, and each missing one fails with an error
that names the package to install. MITHRIL_PLUGINS and MITHRIL_DISABLE_PLUGIN_AUTOLOAD behave.

The `plugins` nox session runs this file after installing and uninstalling plugins, and sets
MITHRIL_EXPECT_BACKENDS to the backends that must be installed at that point; without it the
expected set is read from the installed distributions.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import mithril as ml
from mithril.plugins.registry import install_command

RunPython = Callable[..., subprocess.CompletedProcess[str]]

# backend name -> (attribute on `mithril`, distribution, extra of the core that installs it)
FIRST_PARTY = {
    "numpy": ("NumpyBackend", "mithril-numpy", "numpy"),
    "torch": ("TorchBackend", "mithril-torch", "torch"),
    "jax": ("JaxBackend", "mithril-jax", "jax"),
    "ggml": ("GGMLBackend", "mithril-ggml", "ggml"),
}


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _expected() -> list[str]:
    declared = os.environ.get("MITHRIL_EXPECT_BACKENDS")
    if declared is not None:
        return sorted(name.strip() for name in declared.split(",") if name.strip())
    return sorted(name for name, (_, dist, _) in FIRST_PARTY.items() if _installed(dist))


EXPECTED = _expected()
MISSING = sorted(set(FIRST_PARTY) - set(EXPECTED))


def _each(backends: list[str], why_none: str) -> list[Any]:
    """Parameters for a test per backend; with none, one skipped case that says why (pytest's own
    skip of an empty parameter set reads only "got empty parameter set")."""
    return backends or [pytest.param(None, marks=pytest.mark.skip(reason=why_none), id="none")]


def _runs_mlp(attr: str) -> str:
    """Code that compiles and runs the quick start's MLP on backend `ml.<attr>`."""
    return textwrap.dedent(
        f"""
        import mithril as ml
        from mithril.models import Linear, Model, Relu
        model = Model()
        model |= Linear(dimension=64)
        model += Relu()
        model += Linear(dimension=10)
        backend = ml.{attr}(dtype=ml.float32)
        compiled = ml.compile(model, backend, shapes={{"input": [4, 20]}})
        out = compiled.evaluate(compiled.randomize_params(), {{"input": backend.randn(4, 20)}})
        assert tuple(backend.to_numpy(out["output"]).shape) == (4, 10)
        print("ok")
        """
    )


def _raises_not_found(attr: str, *needles: str) -> str:
    """Code that asserts `ml.<attr>` raises BackendNotFoundError whose message has every needle."""
    return textwrap.dedent(
        f"""
        import mithril as ml
        try:
            ml.{attr}
        except ml.BackendNotFoundError as exc:
            missing = [n for n in {list(needles)!r} if n not in str(exc)]
            assert not missing, f"{{missing}} not in: {{exc}}"
        else:
            raise AssertionError("ml.{attr} did not raise")
        print("ok")
        """
    )


def test_installed_first_party_plugins_are_the_expected_ones() -> None:
    installed = sorted(name for name, (_, dist, _) in FIRST_PARTY.items() if _installed(dist))
    assert installed == EXPECTED


@pytest.mark.parametrize("backend", _each(EXPECTED, "no first-party plugin is installed, so none can run"))
def test_installed_plugin_compiles_and_runs(run_python: RunPython, backend: str) -> None:
    assert run_python(_runs_mlp(FIRST_PARTY[backend][0])).stdout.strip() == "ok"


@pytest.mark.parametrize(
    "backend",
    _each(
        MISSING,
        f"every first-party plugin ({', '.join(FIRST_PARTY)}) is installed, so none is missing; "
        "the `plugins` nox session uninstalls some and runs this again",
    ),
)
def test_missing_plugin_names_the_package_to_install(run_python: RunPython, backend: str) -> None:
    attr, dist, extra = FIRST_PARTY[backend]
    command = install_command(dist, extra)
    # From a checkout: the plugin's directory beside the core's; else the extra with this core's version.
    argument = command.removeprefix("pip install ").removeprefix("-e ")
    assert Path(argument, "pyproject.toml").is_file() or argument == f'"mithril[{extra}]>={ml.__version__}"', command
    assert run_python(_raises_not_found(attr, command, f"package {dist}")).stdout.strip() == "ok"


@pytest.mark.skipif(not EXPECTED, reason="no first-party plugin is installed")
def test_allowlist_loads_only_the_named_plugin(run_python: RunPython) -> None:
    allowed, *others = EXPECTED
    env = {"MITHRIL_PLUGINS": allowed}
    assert run_python(_runs_mlp(FIRST_PARTY[allowed][0]), env=env).stdout.strip() == "ok"
    listed = run_python("import mithril as ml; print(sorted(ml.available_backends()))", env=env).stdout
    assert listed.strip() == repr([allowed])
    for other in others:
        check = _raises_not_found(FIRST_PARTY[other][0], "MITHRIL_PLUGINS", repr(other))
        assert run_python(check, env=env).stdout.strip() == "ok"


@pytest.mark.skipif(not EXPECTED, reason="no first-party plugin is installed")
def test_disabled_autoload_loads_nothing_until_registered_by_hand(run_python: RunPython) -> None:
    env = {"MITHRIL_DISABLE_PLUGIN_AUTOLOAD": "1"}
    listed = run_python("import mithril as ml; print(ml.available_backends())", env=env).stdout
    assert listed.strip() == "{}"
    for backend in EXPECTED:
        attr = FIRST_PARTY[backend][0]
        assert run_python(_raises_not_found(attr, "MITHRIL_DISABLE_PLUGIN_AUTOLOAD"), env=env).stdout.strip() == "ok"
        by_hand = f"import mithril as ml, mithril_{backend}.plugin as p; ml.register_plugin(p)\n" + _runs_mlp(attr)
        assert run_python(by_hand, env=env).stdout.strip() == "ok"
