"""Plugin system: hook specs and the lazily loaded backend registry."""

from .hookspecs import HOOK_CONTRACT_VERSION, hookimpl, hookspec
from .registry import BackendInfo, Registry, registry

__all__ = ["HOOK_CONTRACT_VERSION", "hookimpl", "hookspec", "BackendInfo", "Registry", "registry"]
