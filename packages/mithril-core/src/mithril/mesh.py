"""The `device_mesh=` argument of the backends that shard: axis names and sizes, checked once for all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_AXIS_NAMES", "axis_spec"]

DEFAULT_AXIS_NAMES = ("data", "model")


def axis_spec(owner: str, spec: Sequence[int] | Mapping[str, int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(axis names, sizes) of a device_mesh argument; a tuple's axes are named data, model, axis2, ..."""
    if isinstance(spec, Mapping):
        names, sizes = tuple(spec), tuple(spec.values())
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        sizes = tuple(spec)
        names = tuple(DEFAULT_AXIS_NAMES[i] if i < len(DEFAULT_AXIS_NAMES) else f"axis{i}" for i in range(len(sizes)))
    else:
        raise TypeError(f"{owner}: device_mesh must be a tuple of sizes or a dict name -> size, got {spec!r}")
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"{owner}: device_mesh sizes must be positive ints, got {spec!r}")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise TypeError(f"{owner}: device_mesh axis names must be distinct non-empty strings, got {list(names)}")
    return names, sizes
