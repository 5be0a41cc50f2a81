"""The PyTorch backend: float16/bfloat16/float32/float64 on cpu, cuda or mps; torch autograd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

import mithril as ml
from mithril.backend import Backend, BackendOptions, CompileOptions, Precision
from mithril.dtypes import DType, as_dtype
from mithril.graph import Graph

from .foreach import TorchForeach
from .frozen import freeze
from .lowering import TorchProgram
from .ops import OPS

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["TorchBackend", "TorchCompileOptions"]

_NATIVE = {
    ml.float16: torch.float16,
    ml.bfloat16: torch.bfloat16,
    ml.float32: torch.float32,
    ml.float64: torch.float64,
    ml.int32: torch.int32,
    ml.int64: torch.int64,
    ml.bool: torch.bool,
}
_CORE = {v: k for k, v in _NATIVE.items()}


@dataclass(frozen=True)
class TorchCompileOptions(BackendOptions):
    """`ml.compile` keywords of the torch backend.

    compile_options: keyword arguments for `torch.compile` (needs jit=True). precision: how
    float32 matmuls and convolutions run on CUDA: "highest" (the default) in full float32, "high"
    with TF32 kernels (faster on Ampere and later GPUs, about 10 mantissa bits), "default" as
    torch's own flags say (cuDNN convolutions TF32, cuBLAS matmuls not). The flags are set for
    each call of the compiled model and restored after it (see `mithril_torch.precision`).
    shardings: key -> tuple of mesh axis names or None per dimension (a backend with a device
    mesh only; see `mithril_torch.distributed`).
    """

    compile_options: dict[str, Any] = field(default_factory=dict)
    precision: Precision = "highest"
    shardings: Mapping[str, Any] | None = None


def available_devices() -> list[str]:
    """The torch devices this process can use: cpu, each cuda:N, and mps where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


class TorchBackend(Backend):
    """Runs compiled models as generated torch code; arrays are plain torch tensors.

    dtype: ml.float16, ml.bfloat16, ml.float32 or ml.float64; device: "cpu", "cuda",
    "cuda:N" or "mps". `ml.compile(..., jit=True)` wraps the generated ops in
    `torch.compile`: the first call (and the first call with a new shape or grad mode)
    traces and compiles them, which takes seconds (Inductor builds C++/Triton kernels);
    later calls run the compiled code. `compile_options={...}` passes keyword arguments
    to `torch.compile` (e.g. {"mode": "reduce-overhead"} or {"backend": "aot_eager"}).
    device_mesh: (n,) or {"data": n, "model": m}, inside a torch.distributed job (torchrun, one
    device per process): arrays become DTensors on that mesh, shapes given to ml.compile are
    global, inputs are split over the first axis and gradients all-reduced (see
    `mithril_torch.distributed` and docs/user-guide/distributed.md).
    """

    name = "torch"
    supported_dtypes = (ml.float16, ml.bfloat16, ml.float32, ml.float64)
    supports_gradients = True
    native_autodiff = True
    supports_jit = True
    default_jit = False
    compile_options_type = TorchCompileOptions
    array_type = "torch.Tensor"
    ops = OPS

    def __init__(
        self,
        dtype: DType | str = ml.float32,
        device: str = "cpu",
        device_mesh: Sequence[int] | Mapping[str, int] | None = None,
        **options: Any,
    ) -> None:
        self.reject_unknown(options)
        if not isinstance(device, str):
            raise TypeError(f"TorchBackend: device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
        devices = available_devices()
        if device not in devices:
            raise ValueError(f"TorchBackend: device {device!r} is not available; available devices: {devices}")
        super().__init__(dtype, device)
        self._device = _indexed(torch.device(device))
        self._native = _NATIVE[self.dtype]
        self.generator = torch.Generator(device=self._device)
        self.generator.seed()
        self.mesh: DeviceMesh | None = None
        if device_mesh is not None:
            # imported here: torch.distributed.tensor takes seconds to import, and only a mesh needs it
            from .distributed import make_mesh, synced_seed  # noqa: PLC0415

            self.mesh = make_mesh(device_mesh, self._device.type)
            # every rank draws the same replicated parameters: rank 0's seed for all
            self.generator.manual_seed(synced_seed(self.generator.initial_seed(), self.mesh, self._device))

    def __repr__(self) -> str:
        mesh = (
            "" if self.mesh is None else f", device_mesh={dict(zip(self.mesh.mesh_dim_names or (), self.mesh.shape))}"
        )
        return f"TorchBackend(dtype={self.dtype!r}, device={self.device!r}{mesh})"

    def _on_mesh(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` replicated over the mesh (the same values on every rank); as is without a mesh."""
        if self.mesh is None:
            return tensor
        from .distributed import replicated  # noqa: PLC0415

        return replicated(tensor, self.mesh)

    @property
    def device_type(self) -> str:
        """The torch device type: "cpu", "cuda" or "mps"."""
        return self._device.type

    # -- dtypes ----------------------------------------------------------------------
    def native_dtype(self, dtype: DType) -> torch.dtype:
        return _NATIVE[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        return _CORE.get(getattr(array, "dtype", None))  # type: ignore[arg-type]

    def is_array(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def _dtype(self, dtype: DType | None) -> torch.dtype:
        return self._native if dtype is None else _NATIVE[as_dtype(dtype)]

    def extra_checks(self, var: str) -> list[tuple[str, Any]]:
        """The generated argument check also compares each tensor's device with the backend's."""
        return [(f"{var}.device", self._device)]

    def array_problem(self, array: Any) -> str | None:
        """A tensor on another device than the backend's, named with both devices."""
        device = getattr(array, "device", None)
        if isinstance(device, torch.device) and device != self._device:
            return (
                f"tensor is on device {str(device)!r}, expected {str(self._device)!r} (the backend's device); "
                f"move it with backend.array(...) or .to({str(self._device)!r})"
            )
        return None

    # -- array helpers ---------------------------------------------------------------
    def frozen(self, array: Any) -> torch.Tensor:
        """An alias of `array` (same memory, no copy) that compiled models trust unchanged: a vocabulary head's
        weight keeps an [in, out] copy for as long as the alias lives (kernels.wide_linear). The caller promises
        that nothing writes its memory while compiled models use it; a frozen tensor is returned as it is."""
        return freeze(array)

    def array(self, data: Any, dtype: DType | None = None) -> torch.Tensor:
        """A tensor on the backend device; floating data takes the backend dtype unless `dtype` says otherwise.

        Accepts tensors, NumPy arrays, nested lists and anything with __dlpack__; memory
        is shared (no copy) where dtype and device already match. On a device mesh, `data` is the
        global array (the same on every rank), replicated; a compiled call splits it as its key says.
        """
        if isinstance(data, torch.Tensor):
            tensor = data
        elif isinstance(data, np.ndarray) or not hasattr(data, "__dlpack__"):
            tensor = _from_numpy(np.asarray(data))
        else:
            tensor = torch.from_dlpack(data)
        if self.mesh is not None and hasattr(tensor, "placements"):  # a DTensor already
            target = self._dtype(dtype) if dtype is not None else self._native if tensor.is_floating_point() else None
            return tensor if target is None or tensor.dtype == target else tensor.to(dtype=target)
        if dtype is not None:
            return self._on_mesh(tensor.to(device=self._device, dtype=self._dtype(dtype)))
        if tensor.is_floating_point():
            return self._on_mesh(tensor.to(device=self._device, dtype=self._native))
        return self._on_mesh(tensor.to(device=self._device))

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy array of the values (bfloat16 becomes float32; shares memory for CPU tensors).

        A DTensor is gathered whole on every rank (a collective: every rank must call it).
        """
        if not isinstance(array, torch.Tensor):
            return np.asarray(array)
        tensor = array.detach()
        if hasattr(tensor, "full_tensor"):  # a DTensor
            tensor = tensor.full_tensor()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()

    def set_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def rng_state(self) -> np.ndarray:
        """The generator's state (torch's byte tensor) as a uint8 NumPy array."""
        return self.generator.get_state().numpy().copy()

    def set_rng_state(self, state: Any) -> None:
        self.generator.set_state(torch.from_numpy(np.array(state, np.uint8)))

    def randn(self, *shape: int, dtype: DType | None = None) -> torch.Tensor:
        return self._on_mesh(
            torch.randn(shape, generator=self.generator, dtype=self._dtype(dtype), device=self._device)
        )

    def rand(self, *shape: int, dtype: DType | None = None) -> torch.Tensor:
        return self._on_mesh(torch.rand(shape, generator=self.generator, dtype=self._dtype(dtype), device=self._device))

    def ones(self, *shape: int, dtype: DType | None = None) -> torch.Tensor:
        return self._on_mesh(torch.ones(shape, dtype=self._dtype(dtype), device=self._device))

    def zeros(self, *shape: int, dtype: DType | None = None) -> torch.Tensor:
        return self._on_mesh(torch.zeros(shape, dtype=self._dtype(dtype), device=self._device))

    def mean(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> torch.Tensor:
        return torch.mean(x, dim=_dims(x, axis), keepdim=keepdim)

    def sum(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> torch.Tensor:
        return torch.sum(x, dim=_dims(x, axis), keepdim=keepdim)

    def matmul(self, a: Any, b: Any) -> torch.Tensor:
        return torch.matmul(a, b)

    def exp(self, x: Any) -> torch.Tensor:
        return torch.exp(x)

    def log(self, x: Any) -> torch.Tensor:
        return torch.log(x)

    def sqrt(self, x: Any) -> torch.Tensor:
        return torch.sqrt(x)

    def abs(self, x: Any) -> torch.Tensor:
        return torch.abs(x)

    def max(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> torch.Tensor:
        return torch.amax(x, dim=_dims(x, axis), keepdim=keepdim)

    def argmax(self, x: Any, axis: int | None = None) -> torch.Tensor:
        return torch.argmax(x, dim=axis)

    def reshape(self, x: Any, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.reshape(x, tuple(shape))

    def transpose(self, x: Any, axes: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.permute(x, tuple(range(x.dim() - 1, -1, -1)) if axes is None else tuple(axes))

    def concat(self, arrays: Sequence[Any], axis: int = 0) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)

    def op_table(self) -> dict[str, Any]:
        """The ops; on a device mesh, those whose DTensor rules would give wrong gradients written out in ops that
        have right ones (F.mse_loss's backward divides by the local, not the global, element count)."""
        table = super().op_table()
        if self.mesh is not None:
            from .distributed import MESH_OPS  # noqa: PLC0415

            table.update(MESH_OPS)
        return table

    def foreach_ops(self) -> TorchForeach:
        """ml.optim's list-wise math as torch._foreach_* kernels (one call per operation over all tensors).

        On a device mesh, on each rank's local shards (`MeshForeach`).
        """
        if self.mesh is not None:
            from .distributed import MeshForeach  # noqa: PLC0415

            return MeshForeach(self.mesh)
        return TorchForeach()

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> TorchProgram:
        own = cast(TorchCompileOptions, options.backend)
        if own.compile_options and not options.jit:
            raise TypeError("ml.compile: compile_options are torch.compile arguments and need jit=True")
        if own.shardings is not None and self.mesh is None:
            raise ValueError(
                "ml.compile: shardings= needs a backend with a device mesh, e.g. TorchBackend(device_mesh=(2,))"
            )
        if self.mesh is not None and options.jit:
            raise ValueError(
                f"ml.compile: jit=True (torch.compile) is not supported on a device mesh ({self!r}); "
                "compile with jit=False"
            )
        return TorchProgram(self, graph, options, own.compile_options, own.precision, own.shardings)


def _indexed(device: torch.device) -> torch.device:
    """The device as tensors report it: "cuda" becomes the current cuda:N, "mps" becomes mps:0."""
    if device.index is not None or device.type == "cpu":
        return device
    index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.device(device.type, index)


def _dims(x: torch.Tensor, axis: int | tuple[int, ...] | None) -> int | tuple[int, ...]:
    """torch's `dim` for NumPy's `axis` (None means every axis)."""
    return tuple(range(x.dim())) if axis is None else axis


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing `arr`'s memory where torch can; a copy for read-only, negative-stride or bfloat16 data."""
    if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.astype(np.float32))
    if not arr.flags.writeable or any(s < 0 for s in arr.strides):
        return torch.from_numpy(np.array(arr))
    return torch.from_numpy(arr)
