"""Exceptions Mithril raises; each message names the model, the key and expected versus given."""

from __future__ import annotations

__all__ = [
    "MithrilError",
    "ShapeError",
    "DTypeMismatchError",
    "CompositionError",
    "KeyNotFoundError",
    "IndexRangeError",
    "BackendNotFoundError",
    "UnsupportedError",
    "CollectiveError",
    "NoFaultFound",
]


class MithrilError(Exception):
    """Base class of every error Mithril raises on purpose."""


class ShapeError(MithrilError, ValueError):
    """Two shapes that must agree do not."""


class DTypeMismatchError(MithrilError, TypeError):
    """An array or connection has a dtype other than the one expected."""


class CompositionError(MithrilError, ValueError):
    """A model composition is invalid: unknown key, two producers, a cycle."""


class KeyNotFoundError(MithrilError, KeyError):
    """A key given by the user does not exist, or a required key is missing."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class IndexRangeError(MithrilError, IndexError):
    """An index input holds a value outside the range its primitive accepts."""


class BackendNotFoundError(MithrilError, ImportError):
    """A backend was asked for whose plugin is not installed or failed to load."""


class UnsupportedError(MithrilError, NotImplementedError):
    """A backend lacks a capability the compiled model needs (op, dtype, gradients)."""


class CollectiveError(MithrilError, RuntimeError):
    """A collective of a device mesh across processes failed or timed out (another process stopped or made
    another call); the job's processes must restart, as after any failed collective."""


class NoFaultFound(MithrilError):
    """The slow argument diagnosis found nothing wrong (a fast-path check was stricter)."""
