"""Device meshes over a torch.distributed job, and where each key of a compiled model lives on one.

`TorchBackend(device_mesh=(n,) or {"data": n, "model": m})` builds a `DeviceMesh` over the
processes of the job (one device each) and its arrays are DTensors. Default (data parallel):
inputs, outputs and output gradients are split along their first dimension over the mesh's
first axis; parameters, their gradients and state are replicated. `ml.compile(...,
shardings={key: spec})` overrides a key with a tuple of mesh axis names (or None) per leading
dimension, as on JAX: `("model", None)` shards a Linear weight's rows (column parallel),
`(None, "model")` its columns (row parallel). Gradients come out of the backward pass as partial
sums; `all_reduce_gradients` reduces all of them with one all-reduce per group of mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard

from mithril.codegen import static_shape
from mithril.errors import CollectiveError, KeyNotFoundError, MithrilError, ShapeError
from mithril.graph import Edge, Graph, Node
from mithril.mesh import DEFAULT_AXIS_NAMES, axis_spec

from .foreach import TorchForeach

__all__ = [
    "DEFAULT_AXIS_NAMES",
    "MESH_OPS",
    "CollectiveError",
    "MeshForeach",
    "TorchLayout",
    "all_reduce_gradients",
    "collective_error",
    "make_mesh",
    "replicated",
    "synced_seed",
]

Spec = tuple[Any, ...]


def _mse_loss(node: Node, a: Mapping[str, str]) -> str:
    """F.mse_loss as (input - target)^2 reduced: DTensor's mse_loss backward scales by the local element count."""
    squared = f"(({a['input']}) - ({a['target']})).square()"
    reduction = node.attrs["reduction"]
    return squared if reduction == "none" else f"{squared}.{reduction}()"


MESH_OPS: dict[str, Any] = {"mse_loss": _mse_loss}


def make_mesh(spec: Sequence[int] | Mapping[str, int], device_type: str) -> DeviceMesh:
    """A DeviceMesh over every process of the running torch.distributed job, one device per process."""
    names, sizes = axis_spec("TorchBackend", spec)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"TorchBackend: device_mesh {spec!r} needs a torch.distributed job: launch with torchrun (or SLURM's "
            "srun) and call torch.distributed.init_process_group('gloo' on CPU, 'nccl' on CUDA, timeout=...) "
            "before creating the backend"
        )
    world, needed = dist.get_world_size(), math.prod(sizes)
    if needed != world:
        raise ValueError(
            f"TorchBackend: device_mesh {dict(zip(names, sizes))} has {needed} devices but the torch.distributed "
            f"job has {world} (world size {world} x 1 device per process); the mesh's sizes must multiply to "
            f"{world}"
        )
    return init_device_mesh(device_type, sizes, mesh_dim_names=names)


def synced_seed(seed: int, mesh: DeviceMesh, device: torch.device) -> int:
    """Rank 0's `seed`, broadcast to every rank of the job, so replicated random draws agree."""
    value = torch.tensor([seed % 2**62], dtype=torch.int64, device=device)
    try:
        dist.broadcast(value, src=0)
    except (RuntimeError, dist.DistError) as error:
        raise CollectiveError(
            f"TorchBackend: device_mesh {mesh_label(mesh)}: broadcasting the random seed from rank 0 failed on "
            f"rank {dist.get_rank()}: {error}; every rank must create the backend"
        ) from error
    return int(value.item())


def collective_error(error: RuntimeError, where: str) -> RuntimeError:
    """A CollectiveError naming the mesh for a failed or timed-out collective; other errors as they are."""
    if isinstance(error, MithrilError):
        return error
    text = str(error)
    if not isinstance(error, dist.DistError) and not any(
        word in text for word in ("Gloo", "gloo", "NCCL", "timed out", "Timeout", "Connection closed", "peer")
    ):
        return error
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return CollectiveError(
        f"{where}: a collective failed on rank {rank}: {text.strip().splitlines()[0] if text.strip() else error!r}; "
        "another rank stopped, raised, or did not make the same call (torch.distributed's timeout bounds the wait)"
    )


def mesh_label(mesh: DeviceMesh) -> str:
    """The mesh as a dict of axis name -> size, for messages."""
    return str(dict(zip(mesh.mesh_dim_names or (), mesh.shape)))


def replicated(tensor: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """`tensor`, the same on every rank, as a DTensor replicated over `mesh` (no communication)."""
    return DTensor.from_local(tensor, mesh, [Replicate()] * mesh.ndim, run_check=False)


class TorchLayout:
    """The placements (one per mesh axis) of every param, input and output key of one compiled model."""

    def __init__(self, mesh: DeviceMesh, graph: Graph, overrides: Mapping[str, Any]) -> None:
        self.mesh = mesh
        self.names: tuple[str, ...] = tuple(mesh.mesh_dim_names or ())
        self.sizes = dict(zip(self.names, mesh.shape))
        self.owner = graph.model.describe()
        self.where = f"ml.compile({self.owner}) on mesh {mesh_label(mesh)}"
        groups = {"params": graph.params, "inputs": graph.inputs, "outputs": graph.outputs}
        known = {e.name: e for edges in groups.values() for e in edges}
        for key in overrides:
            if key not in known:
                raise KeyNotFoundError(f"{self.where}: shardings has unknown key {key!r}; keys are {sorted(known)}")
        self.specs: dict[str, Spec] = {}
        for group, edges in groups.items():
            for edge in edges:
                given = overrides.get(edge.name)
                self.specs[edge.name] = self._default(group, edge) if given is None else self._parse(edge, given)
                shape = static_shape(edge)
                if shape is not None:
                    self.check(edge.name, shape, self.where)
        self.placements = {key: self._placements(spec) for key, spec in self.specs.items()}

    def _default(self, group: str, edge: Edge) -> Spec:
        shape = static_shape(edge)
        if group == "params" or edge.is_state or edge.updates is not None or (shape is not None and len(shape) == 0):
            return ()
        return (self.names[0],)

    def _parse(self, edge: Edge, given: Any) -> Spec:
        label = f"{self.where}: shardings[{edge.name!r}]"
        if not isinstance(given, (tuple, list)):
            raise TypeError(f"{label} must be a tuple of mesh axis names or None per dimension, got {given!r}")
        used: list[str] = []
        for entry in given:
            for axis in entry if isinstance(entry, tuple) else (entry,):
                if axis is not None and axis not in self.sizes:
                    raise ValueError(f"{label}: unknown mesh axis {axis!r}; the mesh axes are {list(self.names)}")
                if axis is not None:
                    used.append(axis)
        if len(used) != len(set(used)):
            raise ValueError(f"{label}: a mesh axis may shard one dimension only, got {tuple(given)!r}")
        shape = static_shape(edge)
        if shape is not None and len(given) > len(shape):
            raise ShapeError(f"{label}: {len(given)} entries for a key of rank {len(shape)} (shape {list(shape)})")
        return tuple(given)

    def _placements(self, spec: Spec) -> tuple[Placement, ...]:
        """One placement per mesh axis: Shard(d) where dimension d is split over it, else Replicate."""
        out: list[Placement] = [Replicate()] * len(self.names)
        for dim, entry in enumerate(spec):
            for axis in entry if isinstance(entry, tuple) else (entry,):
                if axis is not None:
                    out[self.names.index(axis)] = Shard(dim)
        return tuple(out)

    def pieces(self, spec: Spec) -> list[int]:
        """How many pieces each leading dimension is cut into under `spec`."""
        return [math.prod(self.sizes[a] for a in (e if isinstance(e, tuple) else (e,)) if a is not None) for e in spec]

    def check(self, key: str, shape: Sequence[int | None], where: str) -> None:
        """Raise a ShapeError when a dimension of `key` does not divide among the devices of its axes."""
        spec = self.specs[key]
        for dim, (size, pieces) in enumerate(zip(shape, self.pieces(spec))):
            if size is not None and size % pieces:
                raise ShapeError(
                    f"{where}: {key!r} has size {size} in dimension {dim}, which does not divide among the "
                    f"{pieces} devices of mesh axis {spec[dim]!r} (mesh {mesh_label(self.mesh)}); pick a size "
                    f"divisible by {pieces} or another sharding, e.g. shardings={{{key!r}: ()}} to replicate it"
                )

    def place(self, arrays: Any, where: str) -> Any:
        """`arrays` (a dict) with each known tensor on the mesh by its key's placements; others as given."""
        if not isinstance(arrays, Mapping):
            return arrays
        out = {}
        for key, value in arrays.items():
            placements = self.placements.get(key)
            if placements is not None and isinstance(value, torch.Tensor):
                self.check(key, tuple(value.shape), where)
                if not isinstance(value, DTensor):
                    value = replicated(value, self.mesh)
                if tuple(value.placements) != placements:
                    value = value.redistribute(self.mesh, placements)
            out[key] = value
        return out


def all_reduce_gradients(grads: dict[str, Any], layout: TorchLayout) -> dict[str, Any]:
    """Sum the partial gradients over the mesh: one flat all-reduce per group of partial mesh axes.

    Data parallel has one group (every gradient is partial over the data axis), so one all-reduce
    per step carries exactly the parameter bytes. Gradients end on their parameter's placements.
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, grad in grads.items():
        if isinstance(grad, DTensor):
            partial = tuple(i for i, p in enumerate(grad.placements) if isinstance(p, Partial))
            if partial:
                groups.setdefault(partial, []).append(key)
    out = dict(grads)
    for dims, keys in groups.items():
        locals_ = [grads[k].to_local() for k in keys]
        flat = torch.cat([t.reshape(-1) for t in locals_]) if len(locals_) > 1 else locals_[0].reshape(-1).clone()
        for dim in dims:
            try:
                dist.all_reduce(flat, group=layout.mesh.get_group(dim))
            except (RuntimeError, dist.DistError) as error:
                raise CollectiveError(
                    f"{layout.owner}: the gradient all-reduce over mesh axis {layout.names[dim]!r} of mesh "
                    f"{mesh_label(layout.mesh)} failed on rank {dist.get_rank()} (keys {keys}): {error}; another "
                    "rank stopped, raised, or did not make the same call (torch.distributed's timeout bounds the wait)"
                ) from error
        average = [d for d in dims if getattr(grads[keys[0]].placements[d], "reduce_op", "sum") == "avg"]
        if average:
            flat /= math.prod(layout.mesh.shape[d] for d in average)
        offset = 0
        for key, local in zip(keys, locals_):
            grad = grads[key]
            piece = flat[offset : offset + local.numel()].view(local.shape)
            offset += local.numel()
            placements = [Replicate() if isinstance(p, Partial) else p for p in grad.placements]
            reduced = DTensor.from_local(
                piece, layout.mesh, placements, run_check=False, shape=grad.shape, stride=grad.stride()
            )
            want = layout.placements.get(key)
            out[key] = reduced if want is None or tuple(placements) == want else reduced.redistribute(layout.mesh, want)
    return out


def _local(value: Any) -> Any:
    """A DTensor's local shard, each DTensor of a list likewise; anything else as is."""
    if isinstance(value, DTensor):
        return value.to_local()
    if isinstance(value, (list, tuple)):
        return [v.to_local() if isinstance(v, DTensor) else v for v in value]
    return value


class MeshForeach(TorchForeach):
    """`TorchForeach` on DTensors of one mesh: an optimizer's elementwise update runs on each rank's local
    shards (params, gradients and state share placements), so a step's update needs no communication."""

    def __init__(self, mesh: DeviceMesh) -> None:
        self.mesh = mesh

    def __repr__(self) -> str:
        return f"MeshForeach(mesh={mesh_label(self.mesh)})"

    def _wrap(self, results: list[Any], like: Sequence[Any]) -> list[Any]:
        return [
            DTensor.from_local(r, self.mesh, x.placements, run_check=False, shape=x.shape, stride=x.stride())
            if isinstance(x, DTensor)
            else r
            for r, x in zip(results, like)
        ]

    def add(self, xs: Sequence[Any], other: Any, alpha: Any = 1.0) -> list[Any]:
        return self._wrap(super().add(_local(xs), _local(other), _local(alpha)), xs)

    def mul(self, xs: Sequence[Any], other: Any) -> list[Any]:
        return self._wrap(super().mul(_local(xs), _local(other)), xs)

    def div(self, xs: Sequence[Any], other: Any) -> list[Any]:
        return self._wrap(super().div(_local(xs), _local(other)), xs)

    def sqrt(self, xs: Sequence[Any]) -> list[Any]:
        return self._wrap(super().sqrt(_local(xs)), xs)

    def maximum(self, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        return self._wrap(super().maximum(_local(xs), _local(ys)), xs)

    def addcmul(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        return self._wrap(super().addcmul(_local(xs), _local(ys), _local(zs), _local(value)), xs)

    def addcdiv(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        return self._wrap(super().addcdiv(_local(xs), _local(ys), _local(zs), _local(value)), xs)

    def lerp(self, xs: Sequence[Any], ys: Sequence[Any], weight: float) -> list[Any]:
        return self._wrap(super().lerp(_local(xs), _local(ys), weight), xs)

    def zeros_like(self, xs: Sequence[Any]) -> list[Any]:
        return self._wrap(super().zeros_like(_local(xs)), xs)

    def where(self, cond: Any, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        if not isinstance(cond, torch.Tensor):
            return super().where(cond, xs, ys)
        return self._wrap(super().where(_local(cond), _local(xs), _local(ys)), xs)

    @torch.no_grad()
    def global_norm(self, xs: Sequence[Any]) -> Any:
        """The norm of the global arrays: local sums of squares, summed over the mesh axes each array is split on."""
        if not xs:
            return torch.tensor(0.0)
        total: torch.Tensor | None = None
        by_axes: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for x in xs:
            local = x.to_local() if isinstance(x, DTensor) else x
            axes = (
                tuple(i for i, p in enumerate(x.placements) if isinstance(p, Shard)) if isinstance(x, DTensor) else ()
            )
            by_axes.setdefault(axes, []).append(local)
        for axes, locals_ in by_axes.items():
            squares = torch.stack(list(torch._foreach_norm(locals_, 2.0))).square().sum()
            for axis in axes:
                dist.all_reduce(squares, group=self.mesh.get_group(axis))
            total = squares if total is None else total + squares
        assert total is not None
        return total.sqrt()

    def scalar(self, value: Any, like: Any) -> Any:
        return super().scalar(value, like.to_local() if isinstance(like, DTensor) else like)
