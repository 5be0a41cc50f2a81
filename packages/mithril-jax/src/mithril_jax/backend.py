"""The JAX backend: jitted generated code on CPU, GPU or TPU, gradients by jax.vjp, device meshes."""

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import mithril as ml
from mithril.array_math import ArrayMath
from mithril.backend import Backend, BackendOptions, CompileOptions, Precision
from mithril.dtypes import DType, as_dtype
from mithril.graph import Graph

from .lowering import JaxProgram
from .ops import OPS
from .sharding import gather, make_mesh, sync_seed, with_deadline

__all__ = ["JaxBackend", "JaxCompileOptions"]


@dataclass(frozen=True)
class JaxCompileOptions(BackendOptions):
    """`ml.compile` keywords of the JAX backend.

    shardings: key -> partition spec (a tuple of mesh axis names or None per dimension); needs
    a backend with a device mesh. precision: how matmuls and convolutions run, traced into the
    compiled functions with `jax.default_matmul_precision`: "highest" (the default) in full
    float32, "high" with faster reduced-precision kernels on GPU and TPU (bfloat16x3, TF32-class),
    "default" as jax's own settings say (on GPUs, TF32-class for float32).
    """

    shardings: Mapping[str, Any] | None = None
    precision: Precision = "highest"


_NATIVE: dict[DType, np.dtype] = {
    ml.float16: np.dtype(jnp.float16),
    ml.bfloat16: np.dtype(jnp.bfloat16),
    ml.float32: np.dtype(jnp.float32),
    ml.float64: np.dtype(jnp.float64),
    ml.int32: np.dtype(jnp.int32),
    ml.int64: np.dtype(jnp.int64),
    ml.bool: np.dtype(jnp.bool_),
}
_CORE = {v: k for k, v in _NATIVE.items()}
_PLATFORMS = ("cpu", "gpu", "tpu")
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
_WIDE = (ml.float64, ml.int64)


@jax.jit
def _split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(new backend key, key to use): one compiled split, cheaper per call than jax.random.split's dispatch."""
    new, use = jax.random.split(key)
    return new, use


@functools.lru_cache(maxsize=None)
def _present_platforms() -> tuple[str, ...]:
    """The platforms jax can run on in this process (asking initialises each backend once)."""
    present = []
    for platform in _PLATFORMS:
        try:
            jax.devices(platform)
        except RuntimeError:
            continue
        present.append(platform)
    return tuple(present)


def _parse_device(device: str) -> tuple[str, int | None]:
    """'gpu', 'cuda:1', 'cpu' -> (platform, index or None); unknown names are a ValueError."""
    if not isinstance(device, str):
        raise TypeError(f"JaxBackend: device must be a string such as 'cpu', 'gpu' or 'tpu:0', got {device!r}")
    name, _, index = device.lower().partition(":")
    platform = _ALIASES.get(name, name)
    if platform not in _PLATFORMS:
        raise ValueError(f"JaxBackend: unknown device {device!r}; choose one of {list(_PLATFORMS)} (optionally ':N')")
    if index and not index.isdigit():
        raise ValueError(f"JaxBackend: device index in {device!r} must be a non-negative integer")
    return platform, int(index) if index else None


class JaxBackend(ArrayMath, Backend):
    """Runs compiled models as generated jnp code under jax.jit, on one device or a device mesh.

    float64 needs jax's x64 mode, a process-wide switch: it is turned on when a float64
    backend is created (or float64/int64 arrays are asked for), never otherwise, so code
    that never asks for 64-bit types keeps jax's defaults. Every helper and compiled model
    states its dtype explicitly, so arrays of float32/16 backends stay float32/16 under x64.
    """

    name = "jax"
    supported_dtypes = (ml.float16, ml.bfloat16, ml.float32, ml.float64)
    supports_gradients = True
    native_autodiff = True
    supports_jit = True
    default_jit = True
    compile_options_type = JaxCompileOptions
    array_type = "jax.Array or numpy.ndarray"
    ops = OPS
    xp = jnp

    def __init__(
        self,
        dtype: DType | str = ml.float32,
        device: str = "cpu",
        device_mesh: Sequence[int] | Mapping[str, int] | None = None,
        collective_timeout: float | None = None,
        **options: Any,
    ) -> None:
        self.reject_unknown(options)
        if collective_timeout is not None and (
            isinstance(collective_timeout, bool)
            or not isinstance(collective_timeout, (int, float))
            or not collective_timeout > 0
        ):
            raise ValueError(
                f"JaxBackend: collective_timeout must be a number of seconds > 0 or None, got {collective_timeout!r}"
            )
        # On a mesh across processes: how long a call waits for its results before raising CollectiveError
        # (JAX's collectives have no timeout of their own; None waits as long as they take).
        self.collective_timeout = None if collective_timeout is None else float(collective_timeout)
        platform, index = _parse_device(device)
        super().__init__(dtype, device)
        present = _present_platforms()
        if platform not in present:
            raise RuntimeError(
                f"JaxBackend: device {device!r} is not available: jax finds no {platform} platform in this "
                f"process; platforms present: {list(present)}"
            )
        devices = jax.devices(platform)
        # after jax.distributed.initialize, jax.devices() lists every process's devices; arrays of this
        # process (keys, off-mesh arrays) live on its own first device
        local = [d for d in devices if d.process_index == jax.process_index()] or devices
        if index is not None and index >= len(devices):
            raise ValueError(
                f"JaxBackend: device {device!r} does not exist; {len(devices)} {platform} device(s) present"
            )
        if index is not None and device_mesh is not None:
            raise ValueError(f"JaxBackend: give a platform without an index ({platform!r}) with device_mesh=")
        self.platform = platform
        self.jax_device = local[0] if index is None else devices[index]
        self.mesh: Mesh | None = None if device_mesh is None else make_mesh(device_mesh, devices, platform)
        self._placement: Any = self.jax_device if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        self._native = self._dtype(self.dtype)
        if self.mesh is not None and self.collective_timeout is not None and jax.process_count() > 1:
            # placing an array on a mesh across processes is a collective: bounded like a compiled call's
            where = f"JaxBackend(device_mesh={dict(self.mesh.shape)})"
            self._place = with_deadline(self._place, self.collective_timeout, where)  # type: ignore[method-assign]
        # held while the key is read and replaced, so concurrent calls never draw the same key
        self.key_lock = threading.Lock()
        seed = secrets.randbits(32)
        if self.mesh is not None and jax.process_count() > 1:
            # every process draws the same replicated parameters and dropout masks: process 0's seed for all
            seed = sync_seed(seed, self.mesh)
        self._key = self._fresh_key(seed)

    def __repr__(self) -> str:
        mesh = "" if self.mesh is None else f", device_mesh={dict(self.mesh.shape)}"
        return f"JaxBackend(dtype={self.dtype!r}, device={self.device!r}{mesh})"

    # -- dtypes ----------------------------------------------------------------------
    def native_dtype(self, dtype: DType) -> Any:
        return _NATIVE[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        dtype = getattr(array, "dtype", None)
        return None if dtype is None else _CORE.get(np.dtype(dtype))

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (jax.Array, np.ndarray, np.generic))

    def _dtype(self, dtype: DType | str | None) -> np.dtype:
        """The native dtype for `dtype` (None: the backend's), switching on x64 for 64-bit types."""
        if dtype is None:
            return self._native
        core = as_dtype(dtype)
        if core in _WIDE and not jax.config.read("jax_enable_x64"):
            jax.config.update("jax_enable_x64", True)
        return _NATIVE[core]

    # -- array helpers ---------------------------------------------------------------
    def _place(self, array: Any) -> jax.Array:
        return jax.device_put(array, self._placement)

    def _fresh_key(self, seed: int) -> jax.Array:
        with jax.default_device(self.jax_device):
            return jax.random.key(seed)

    def next_key(self) -> jax.Array:
        """A fresh PRNG key split off the backend's own (reset by `set_seed`); one per random draw or call.

        Compiled models with dropout (off a mesh) make this same split inside their jitted call:
        they take `_key` and return its successor, which the call stores back in `_key`, both under
        `key_lock`, so threads sharing the backend never draw the same key.
        """
        with self.key_lock:
            self._key, key = _split(self._key)
        return key

    def array(self, data: Any, dtype: DType | None = None) -> jax.Array:
        """A jax array on the backend's device(s); floating data takes the backend dtype unless `dtype` says.

        numpy arrays and lists are copied once to the device; other dlpack-capable arrays
        (torch, cupy, ...) are taken without a copy where jax.dlpack allows it.
        """
        arr: Any
        if isinstance(data, jax.Array):
            arr = data
        elif hasattr(data, "__dlpack__") and not isinstance(data, (np.ndarray, np.generic)):
            try:
                arr = jnp.from_dlpack(data)
            except (TypeError, ValueError, RuntimeError, BufferError):
                arr = np.asarray(data)
        else:
            arr = np.asarray(data)
        if dtype is not None:
            target = self._dtype(dtype)
        elif jnp.issubdtype(arr.dtype, jnp.floating):
            target = self._native
        else:
            target = arr.dtype
        if arr.dtype != target:
            arr = arr.astype(target)
        elif isinstance(arr, np.ndarray) and arr is data:
            # jax.device_put may alias a host buffer on the CPU: a later write to the caller's array
            # would change this one. A copy keeps the documented "copied once" promise.
            arr = arr.copy()
        return self._place(arr)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy array of the values; an array spanning several processes is gathered whole on every process
        (a collective there: every process must call it)."""
        if isinstance(array, jax.Array) and not array.is_fully_addressable and not array.is_fully_replicated:
            return gather(array)
        return np.asarray(array)

    def set_seed(self, seed: int) -> None:
        key = self._fresh_key(seed)
        with self.key_lock:
            self._key = key

    def rng_state(self) -> np.ndarray:
        """The backend's PRNG key data (uint32) as a NumPy array."""
        with self.key_lock:
            return np.asarray(jax.random.key_data(self._key)).copy()

    def set_rng_state(self, state: Any) -> None:
        with jax.default_device(self.jax_device):
            key = jax.random.wrap_key_data(np.asarray(state, np.uint32))
        with self.key_lock:
            self._key = key

    def randn(self, *shape: int, dtype: DType | None = None) -> jax.Array:
        return self._place(jax.random.normal(self.next_key(), shape, self._dtype(dtype)))

    def rand(self, *shape: int, dtype: DType | None = None) -> jax.Array:
        return self._place(jax.random.uniform(self.next_key(), shape, self._dtype(dtype)))

    def ones(self, *shape: int, dtype: DType | None = None) -> jax.Array:
        return jnp.ones(shape, self._dtype(dtype), device=self._placement)

    def zeros(self, *shape: int, dtype: DType | None = None) -> jax.Array:
        return jnp.zeros(shape, self._dtype(dtype), device=self._placement)

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> JaxProgram:
        return JaxProgram(self, graph, options)
