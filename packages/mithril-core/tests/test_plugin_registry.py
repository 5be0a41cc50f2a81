"""The registry's advice for a missing first-party plugin: the plugin's directory beside a core
installed from a checkout (PEP 610 direct_url.json), else the core's extra pinned to this core's
version, never a bare `mithril[extra]` that may resolve to the unrelated `mithril` 0.1.x on PyPI.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import mithril as ml
from mithril.plugins.registry import ALLOW_ENV, DISABLE_ENV, Registry, install_command


class FakeCore:
    """Stands in for the `mithril` distribution: only its direct_url.json is read."""

    def __init__(self, direct_url: dict[str, Any] | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.fixture
def core(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`core(direct_url, version)`: make the installed core look installed that way."""

    def install(direct_url: dict[str, Any] | None, version: str = "1.0.0.dev0") -> None:
        real_distribution, real_version = metadata.distribution, metadata.version

        def distribution(name: str) -> Any:
            return FakeCore(direct_url) if name == "mithril" else real_distribution(name)

        def version_of(name: str) -> str:
            return version if name == "mithril" else real_version(name)

        monkeypatch.setattr(metadata, "distribution", distribution)
        monkeypatch.setattr(metadata, "version", version_of)

    return install


def _checkout(root: Path, *plugins: str) -> Path:
    """A fake checkout under `root` with the core and `plugins` as package directories."""
    for name in ("mithril-core", *plugins):
        (root / "packages" / name).mkdir(parents=True)
        (root / "packages" / name / "pyproject.toml").write_text("[project]\n")
    return root / "packages" / "mithril-core"


@pytest.mark.parametrize("editable", [True, False])
def test_core_from_a_checkout_names_the_plugin_directory(core: Any, tmp_path: Path, editable: bool) -> None:
    core_dir = _checkout(tmp_path, "mithril-jax")
    core({"url": core_dir.as_uri(), "dir_info": {"editable": editable} if editable else {}})
    plugin = tmp_path / "packages" / "mithril-jax"
    assert install_command("mithril-jax", "jax") == f"pip install {'-e ' if editable else ''}{plugin}"


def test_a_directory_with_spaces_is_quoted(core: Any, tmp_path: Path) -> None:
    core_dir = _checkout(tmp_path / "my repo", "mithril-ggml")
    core({"url": core_dir.as_uri(), "dir_info": {}})
    assert install_command("mithril-ggml", "ggml") == f"pip install '{tmp_path / 'my repo/packages/mithril-ggml'}'"


@pytest.mark.parametrize(
    "how",
    ["from an index", "from a wheel file", "from a VCS url", "from a directory without the plugin beside it"],
)
def test_core_from_elsewhere_names_the_extra_with_this_cores_version(core: Any, tmp_path: Path, how: str) -> None:
    direct_url = {
        "from an index": None,
        "from a wheel file": {"url": (tmp_path / "mithril-1.2.3-py3-none-any.whl").as_uri(), "archive_info": {}},
        "from a VCS url": {"url": "https://example.org/mithril.git", "vcs_info": {"vcs": "git", "commit_id": "0"}},
        "from a directory without the plugin beside it": {"url": _checkout(tmp_path).as_uri(), "dir_info": {}},
    }[how]
    core(direct_url, version="1.2.3")
    assert install_command("mithril-torch", "torch") == 'pip install "mithril[torch]>=1.2.3"'


def test_a_missing_plugin_error_gives_the_command(core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    core(None)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [])
    for variable in (DISABLE_ENV, ALLOW_ENV):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ml.BackendNotFoundError) as error:
        Registry().backend_class("JaxBackend")
    message = str(error.value)
    assert 'pip install "mithril[jax]>=1.0.0.dev0"' in message and "(package mithril-jax)" in message, message
    assert ' "mithril[jax]" ' not in message, message


def test_the_installed_core_is_named_by_its_own_version() -> None:
    assert metadata.version("mithril") == ml.__version__
