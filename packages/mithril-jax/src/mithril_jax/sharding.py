"""Device meshes and where each key of a compiled model lives on one.

Default (data parallel): inputs, outputs and output gradients are split along their
first dimension over the mesh's first axis; parameters, their gradients and state
(running statistics) are replicated, so XLA all-reduces the gradients.
`ml.compile(..., shardings={key: spec})` overrides any key with a PartitionSpec-like tuple: one
entry per leading dimension, each a mesh axis name, a tuple of names, or None; `()` replicates.

After `jax.distributed.initialize(...)` a mesh spans the devices of every process (process by
process, so the first axis splits the batch across processes): shapes are global, arrays given
to the backend are the same global values on every process, and `gather` fetches a global array
whole on every process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mithril.codegen import static_shape
from mithril.errors import CollectiveError, KeyNotFoundError, ShapeError
from mithril.graph import Edge, Graph
from mithril.mesh import DEFAULT_AXIS_NAMES, axis_spec

__all__ = ["make_mesh", "Layout", "DEFAULT_AXIS_NAMES", "gather", "sync_seed", "with_deadline"]


def make_mesh(spec: Sequence[int] | Mapping[str, int], devices: Sequence[Any], platform: str) -> Mesh:
    """A Mesh over the first devices of `platform`; a tuple's axes are named data, model, axis2, ..."""
    names, sizes = axis_spec("JaxBackend", spec)
    needed = math.prod(sizes)
    processes = jax.process_count()
    if processes > 1 and needed != len(devices):
        local = jax.local_device_count(platform)
        raise ValueError(
            f"JaxBackend: device_mesh {spec!r} has {needed} devices but the {processes} jax processes have "
            f"{len(devices)} {platform} devices ({processes} processes x {local} local devices); a mesh across "
            f"processes must use every device: sizes that multiply to {len(devices)}"
        )
    if processes > 1:
        devices = sorted(devices, key=lambda d: (d.process_index, d.id))
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


def sync_seed(seed: int, mesh: Mesh) -> int:
    """Process 0's `seed` on every process (a collective), so replicated random draws agree."""
    from jax.experimental import multihost_utils  # noqa: PLC0415 - only meshes across processes need it

    try:
        return int(multihost_utils.broadcast_one_to_all(np.uint32(seed)))
    except Exception as error:  # noqa: BLE001 - any failure of the collective, named with the mesh
        raise RuntimeError(
            f"JaxBackend: device_mesh {dict(mesh.shape)}: broadcasting the random seed from process 0 failed on "
            f"process {jax.process_index()}: {error}; every process must create the backend"
        ) from error


def gather(array: jax.Array) -> np.ndarray:
    """A global array spanning several processes, whole, as NumPy on every process (all must call it)."""
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def with_deadline(fn: Callable[..., Any], seconds: float, where: str) -> Callable[..., Any]:
    """`fn`, called and awaited for at most `seconds`: then a CollectiveError naming `where` is raised.

    For calls whose collectives span processes (JaxBackend's collective_timeout): JAX's own wait has
    no timeout, so a process that skipped the call would leave this one waiting for ever. The call and
    the wait run on a helper thread (on CPU, XLA may run a collective inside the dispatching call); an
    error of the computation itself is raised as it is.
    """

    def call(*args: Any) -> Any:
        outcome: list[Any] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(jax.block_until_ready(fn(*args)))
            except BaseException as error:  # noqa: BLE001 - handed to the calling thread
                failure.append(error)
            finally:
                done.set()

        threading.Thread(target=run, name="mithril-collective-call", daemon=True).start()
        if not done.wait(seconds):
            raise CollectiveError(
                f"{where}: no result on process {jax.process_index()} of {jax.process_count()} within the "
                f"collective_timeout of {seconds:g} s: another process stopped, raised, or did not make the same "
                "call; restart every process of the job (its collectives cannot be resumed)"
            )
        if failure:
            raise failure[0]
        return outcome[0]

    return call
