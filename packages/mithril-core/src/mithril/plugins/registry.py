"""Backend discovery: a pluggy manager fed lazily from the `mithril.backends` entry points.

MITHRIL_DISABLE_PLUGIN_AUTOLOAD=1 loads no entry point (register plugins by hand with
`mithril.register_plugin`); MITHRIL_PLUGINS=numpy,torch loads only the named entry points.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from ..errors import BackendNotFoundError
from . import hookspecs

__all__ = ["BackendInfo", "Registry", "registry", "FIRST_PARTY", "install_command"]

ENTRY_POINT_GROUP = "mithril.backends"
DISABLE_ENV = "MITHRIL_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "MITHRIL_PLUGINS"

# attribute -> (backend name, distribution, extra): lets a missing plugin name its package.
FIRST_PARTY = {
    "NumpyBackend": ("numpy", "mithril-numpy", "numpy"),
    "TorchBackend": ("torch", "mithril-torch", "torch"),
    "JaxBackend": ("jax", "mithril-jax", "jax"),
    "GGMLBackend": ("ggml", "mithril-ggml", "ggml"),
}


CORE_DISTRIBUTION = "mithril"


def _local_core_directory() -> tuple[Path, bool] | None:
    """The directory the core was installed from, and whether editably (PEP 610 direct_url.json),
    or None when it came from an index, an archive, or is not installed as a distribution."""
    import json  # only when an error message needs it: `import mithril` stays light
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    try:
        text = metadata.distribution(CORE_DISTRIBUTION).read_text("direct_url.json")
        record = json.loads(text) if text else None
    except (metadata.PackageNotFoundError, OSError, ValueError):
        return None
    if not isinstance(record, dict) or "dir_info" not in record:
        return None
    url = urlparse(str(record.get("url", "")))
    if url.scheme != "file":
        return None
    editable = bool((record.get("dir_info") or {}).get("editable", False))
    return Path(url2pathname(url.path)), editable


def _core_version() -> str:
    try:
        return metadata.version(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def install_command(distribution: str, extra: str) -> str:
    """The pip command that installs the first-party plugin `distribution` for this core.

    A core installed from a checkout (`pip install [-e] <repo>/packages/mithril-core`) gets the
    plugin's directory beside it, installed the same way. Otherwise the core's extra, pinned to
    this core's version or later: a bare `mithril[extra]` may resolve to the unrelated `mithril`
    0.1.x on PyPI and replace this core.
    """
    import shlex

    local = _local_core_directory()
    if local is not None:
        core_dir, editable = local
        plugin_dir = core_dir.parent / distribution
        if (plugin_dir / "pyproject.toml").is_file():
            return f"pip install {'-e ' if editable else ''}{shlex.quote(str(plugin_dir))}"
    return f'pip install "{CORE_DISTRIBUTION}[{extra}]>={_core_version()}"'


@dataclass
class BackendInfo:
    """One installed backend: where it comes from, and the error if its plugin failed."""

    name: str
    attr: str | None
    target: str
    plugin: str
    distribution: str | None
    version: str | None
    error: str | None = None


class Registry:
    """Holds the plugin manager and the backends plugins registered."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pm: pluggy.PluginManager | None = None
        self._backends: dict[str, BackendInfo] = {}
        self._classes: dict[str, type] = {}
        self._failures: dict[str, BackendInfo] = {}
        self._dists: dict[str, tuple[str | None, str | None]] = {}

    @property
    def manager(self) -> pluggy.PluginManager:
        with self._lock:
            if self._pm is None:
                self._pm = pluggy.PluginManager("mithril")
                self._pm.add_hookspecs(hookspecs)
                if not os.environ.get(DISABLE_ENV):
                    self._load_entry_points()
            return self._pm

    def _load_entry_points(self) -> None:
        allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allow and ep.name not in allow:
                continue
            dist = getattr(ep, "dist", None)
            dist_info = (dist.name, dist.version) if dist is not None else (None, None)
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                self._failures[ep.name] = BackendInfo(
                    ep.name, None, ep.value, ep.name, dist_info[0], dist_info[1], f"{type(exc).__name__}: {exc}"
                )
                continue
            self._register(plugin, ep.name, dist_info)

    def register_plugin(self, plugin: ModuleType | object, name: str | None = None) -> None:
        """Register a plugin object by hand (used when autoloading is disabled, and in tests)."""
        with self._lock:
            self.manager  # noqa: B018 - make sure the manager exists
            self._register(plugin, name or str(getattr(plugin, "__name__", repr(plugin))), (None, None))

    def _register(self, plugin: object, name: str, dist: tuple[str | None, str | None]) -> None:
        assert self._pm is not None
        if self._pm.is_registered(plugin):
            return
        self._pm.register(plugin, name=name)
        self._dists[name] = dist
        for impl in self._pm.hook.mithril_register_backends.get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(bname: str, target: Any, *, attr: str | None = None) -> None:
                if not isinstance(target, str):
                    self._classes[bname] = target
                    target = f"{target.__module__}:{target.__qualname__}"
                self._backends[bname] = BackendInfo(bname, attr, target, name, *dist)

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                self._failures[name] = BackendInfo(name, None, name, name, *dist, error=f"{type(exc).__name__}: {exc}")

    def available(self) -> dict[str, BackendInfo]:
        self.manager  # noqa: B018
        return {**self._failures, **self._backends}

    def find_name(self, attr: str) -> str | None:
        self.manager  # noqa: B018
        for info in self._backends.values():
            if info.attr == attr:
                return info.name
        return None

    def backend_class(self, name: str) -> type:
        """The backend class registered as `name` (or exposed as attribute `name`)."""
        with self._lock:
            self.manager  # noqa: B018
            key = name if name in self._backends else self.find_name(name)
            if key is None:
                raise self._missing(name)
            if key not in self._classes:
                module, _, qual = self._backends[key].target.partition(":")
                obj: Any = importlib.import_module(module)
                for part in qual.split("."):
                    obj = getattr(obj, part)
                self._classes[key] = obj
            return self._classes[key]

    def _missing(self, name: str) -> BackendNotFoundError:
        hint = FIRST_PARTY.get(name) or next((v for v in FIRST_PARTY.values() if v[0] == name), None)
        failure = self._failures.get(hint[0] if hint else name)
        known = sorted(self._backends)
        if failure is not None:
            return BackendNotFoundError(
                f"the Mithril plugin {failure.plugin!r} providing {name!r} failed to load: {failure.error}"
            )
        if hint is not None:
            if os.environ.get(DISABLE_ENV):
                why = f"plugin autoloading is disabled by {DISABLE_ENV}"
            elif os.environ.get(ALLOW_ENV):
                why = f"{ALLOW_ENV}={os.environ[ALLOW_ENV]!r} does not allow the {hint[0]!r} plugin"
            else:
                why = f"its plugin is not installed: {install_command(hint[1], hint[2])} (package {hint[1]})"
            return BackendNotFoundError(f"backend {name!r} is not available: {why}; installed: {known}")
        return BackendNotFoundError(f"no backend named {name!r}; installed backends: {known}")

    def extra_ops(self, backend_name: str) -> dict[str, Any]:
        """Op implementations that plugins add to or override on `backend_name`."""
        ops: dict[str, Any] = {}
        self.manager.hook.mithril_register_ops(
            backend_name=backend_name, register=lambda prim, impl: ops.__setitem__(prim, impl)
        )
        return ops


registry = Registry()
