"""Device meshes and where each key of a compiled model lives on one.

Default (data parallel): inputs, outputs and output gradients are split along their
first dimension over the mesh's first axis; parameters, their gradients and state
(running statistics) are replicated, so XLA all-reduces the gradients.
`ml.compile(..., shardings={key: spec})` overrides any key with a PartitionSpec-like tuple: one
entry per leading dimension, each a mesh axis name, a tuple of names, or None; `()` replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mithril.codegen import static_shape
from mithril.errors import KeyNotFoundError, ShapeError
from mithril.graph import Edge, Graph

__all__ = ["make_mesh", "Layout", "DEFAULT_AXIS_NAMES"]

DEFAULT_AXIS_NAMES = ("data", "model")


def make_mesh(spec: Sequence[int] | Mapping[str, int], devices: Sequence[Any], platform: str) -> Mesh:
    """A Mesh over the first devices of `platform`; a tuple's axes are named data, model, axis2, ..."""
    if isinstance(spec, Mapping):
        names, sizes = tuple(spec), tuple(spec.values())
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        sizes = tuple(spec)
        names = tuple(DEFAULT_AXIS_NAMES[i] if i < len(DEFAULT_AXIS_NAMES) else f"axis{i}" for i in range(len(sizes)))
    else:
        raise TypeError(f"JaxBackend: device_mesh must be a tuple of sizes or a dict name -> size, got {spec!r}")
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"JaxBackend: device_mesh sizes must be positive ints, got {spec!r}")
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"JaxBackend: device_mesh axis names must be non-empty strings, got {list(names)}")
    needed = math.prod(sizes)
    if needed > len(devices):
        hint = (
            f"; emulate more CPU devices with XLA_FLAGS=--xla_force_host_platform_device_count={needed} "
            "set before jax is imported"
            if platform == "cpu"
            else ""
        )
        raise ValueError(
            f"JaxBackend: device_mesh {spec!r} needs {needed} {platform} devices but "
            f"{len(devices)} {'is' if len(devices) == 1 else 'are'} present{hint}"
        )
    return Mesh(np.array(list(devices)[:needed], dtype=object).reshape(sizes), names)


class Layout:
    """The NamedSharding of every param, input and output key of one compiled model."""

    def __init__(self, mesh: Mesh, graph: Graph, overrides: Mapping[str, Any]) -> None:
        self.mesh = mesh
        self.owner = graph.model.describe()
        self.batch_axis = mesh.axis_names[0]
        groups = {"params": graph.params, "inputs": graph.inputs, "outputs": graph.outputs}
        known = {e.name: e for edges in groups.values() for e in edges}
        if not isinstance(overrides, Mapping):
            raise TypeError(f"ml.compile({self.owner}): shardings must be a dict key -> spec, got {overrides!r}")
        for key in overrides:
            if key not in known:
                raise KeyNotFoundError(
                    f"ml.compile({self.owner}): shardings has unknown key {key!r}; keys are {sorted(known)}"
                )
        self.specs: dict[str, PartitionSpec] = {}
        for group, edges in groups.items():
            for edge in edges:
                given = overrides.get(edge.name)
                spec = self._default(group, edge) if given is None else self._parse(edge, given)
                self.specs[edge.name] = spec
                self._check_static(edge, spec)
        self.params = {e.name: NamedSharding(mesh, self.specs[e.name]) for e in graph.params}
        self.inputs = {e.name: NamedSharding(mesh, self.specs[e.name]) for e in graph.inputs}
        self.outputs = {e.name: NamedSharding(mesh, self.specs[e.name]) for e in graph.outputs}

    def _default(self, group: str, edge: Edge) -> PartitionSpec:
        shape = static_shape(edge)
        if group == "params" or edge.is_state or edge.updates is not None or (shape is not None and len(shape) == 0):
            return PartitionSpec()
        return PartitionSpec(self.batch_axis)

    def _parse(self, edge: Edge, given: Any) -> PartitionSpec:
        label = f"ml.compile({self.owner}): shardings[{edge.name!r}]"
        entries = tuple(given) if isinstance(given, (tuple, list, PartitionSpec)) else None
        if entries is None:
            raise TypeError(f"{label} must be a tuple of mesh axis names or None per dimension, got {given!r}")
        names = set(self.mesh.axis_names)
        for entry in entries:
            axes = entry if isinstance(entry, tuple) else (entry,)
            for axis in axes:
                if axis is not None and axis not in names:
                    raise ValueError(
                        f"{label}: unknown mesh axis {axis!r}; the mesh axes are {list(self.mesh.axis_names)}"
                    )
        shape = static_shape(edge)
        if shape is not None and len(entries) > len(shape):
            raise ShapeError(f"{label}: {len(entries)} entries for a key of rank {len(shape)} (shape {list(shape)})")
        return PartitionSpec(*entries)

    def split(self, spec: PartitionSpec) -> list[int]:
        """How many pieces each leading dimension is cut into under `spec`."""
        sizes = dict(zip(self.mesh.axis_names, self.mesh.devices.shape))
        out = []
        for entry in spec:
            axes = entry if isinstance(entry, tuple) else (entry,)
            out.append(math.prod(sizes[a] for a in axes if a is not None))
        return out

    def _check_static(self, edge: Edge, spec: PartitionSpec) -> None:
        shape = static_shape(edge)
        if shape is not None:
            self.check(edge.name, shape, spec, f"ml.compile({self.owner})")

    def check(self, key: str, shape: Sequence[int | None], spec: PartitionSpec, where: str) -> None:
        """Raise a ShapeError when a dimension of `key` does not divide among the devices of its axes."""
        for dim, (size, pieces) in enumerate(zip(shape, self.split(spec))):
            if size is not None and size % pieces:
                raise ShapeError(
                    f"{where}: {key!r} has size {size} in dimension {dim}, which does not divide among the "
                    f"{pieces} devices of mesh axis {spec[dim]!r} (mesh {dict(self.mesh.shape)}); pick a size "
                    f"divisible by {pieces} or another sharding, e.g. shardings={{{key!r}: ()}} to replicate it"
                )

    def check_call(self, arrays: Mapping[str, Any], where: str) -> None:
        """Check the arrays of one call (inputs, outputs or output gradients) against their shardings."""
        for key, value in arrays.items():
            if key in self.specs and hasattr(value, "shape"):
                self.check(key, tuple(value.shape), self.specs[key], where)

    def put(self, tree: Mapping[str, Any], shardings: Mapping[str, NamedSharding]) -> Any:
        """Place a dict of arrays on the mesh, each by its key's sharding."""
        return jax.device_put(tree, {k: shardings[k] for k in tree})
