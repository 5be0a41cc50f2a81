"""The hook specifications a Mithril plugin implements (version 1 of the hook contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["hookspec", "hookimpl", "HOOK_CONTRACT_VERSION"]

HOOK_CONTRACT_VERSION = 1
hookspec = pluggy.HookspecMarker("mithril")
hookimpl = pluggy.HookimplMarker("mithril")


@hookspec
def mithril_register_backends(register: Callable[..., None]) -> None:
    """Call `register(name, target, *, attr=None)` for each backend this plugin provides.

    `target` is the backend class or a lazy "module:Class" string (preferred: the
    framework is then imported only when the backend is first used); `attr` is the
    name under which `mithril` exposes it, e.g. "TorchBackend".
    """


@hookspec
def mithril_register_ops(backend_name: str, register: Callable[[str, Any], None]) -> None:
    """Add or override op implementations of backend `backend_name`: `register(primitive, impl)`.

    `impl` has the form that backend's op table uses (see the backend guide).
    """
