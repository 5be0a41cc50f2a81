"""The GGML backend: float32 CPU graphs, optional int8/int4/float16 weights, ggml's autograd."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions
from mithril.dtypes import DType
from mithril.graph import Graph

from .lowering import GGMLProgram
from .ops import OPS
from .quant import QUANTIZE_MODES

__all__ = ["GGMLBackend"]

_NATIVE = {
    ml.float16: np.dtype(np.float16),
    ml.float32: np.dtype(np.float32),
    ml.float64: np.dtype(np.float64),
    ml.int32: np.dtype(np.int32),
    ml.int64: np.dtype(np.int64),
    ml.bool: np.dtype(np.bool_),
}
_CORE = {v: k for k, v in _NATIVE.items()}
# Graphs with fewer multiply-accumulates than this run on one thread: waking more
# threads costs more than it saves on small matrices.
SMALL_GRAPH_MACS = 2_000_000


class GGMLBackend(Backend):
    """Runs compiled models as static ggml graphs on the CPU; arrays are host NumPy arrays.

    quantize: None (float32 weights), "float16", "int8" (ggml Q8_0) or "int4" (Q4_0);
    activations stay float32. n_threads: threads per graph; None uses one thread for
    small graphs and every available core otherwise.
    """

    name = "ggml"
    supported_dtypes = (ml.float32,)
    supports_gradients = True
    supports_jit = False
    ops = OPS  # type: ignore[assignment]
    quantize_modes = tuple(QUANTIZE_MODES)

    def __init__(
        self,
        dtype: DType | str = ml.float32,
        quantize: str | None = None,
        n_threads: int | None = None,
        device: str = "cpu",
        **options: Any,
    ) -> None:
        self.reject_unknown(options)
        if device != "cpu":
            raise ValueError(f"GGMLBackend: device {device!r} is not available; this backend runs on 'cpu' only")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"GGMLBackend: quantize must be one of {list(QUANTIZE_MODES)}, got {quantize!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"GGMLBackend: n_threads must be a positive int or None, got {n_threads!r}")
        super().__init__(dtype, device)
        self.quantize = quantize
        self.n_threads = n_threads
        self._rng = np.random.default_rng()

    def __repr__(self) -> str:
        return f"GGMLBackend(dtype={self.dtype!r}, quantize={self.quantize!r}, n_threads={self.n_threads!r})"

    def threads_for(self, macs: int) -> int:
        """Threads for a graph of `macs` multiply-accumulates (the user's n_threads when given)."""
        if self.n_threads is not None:
            return self.n_threads
        if macs < SMALL_GRAPH_MACS:
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    # -- dtypes ----------------------------------------------------------------------
    def native_dtype(self, dtype: DType) -> Any:
        return _NATIVE[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        return _CORE.get(getattr(array, "dtype", None))  # type: ignore[arg-type]

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def _dtype(self, dtype: DType | None) -> np.dtype:
        return _NATIVE[self.dtype] if dtype is None else _NATIVE[ml.dtypes.as_dtype(dtype)]

    # -- array helpers (host NumPy arrays) -------------------------------------------
    def array(self, data: Any, dtype: DType | None = None) -> np.ndarray:
        """A NumPy array; floating data becomes float32 unless `dtype` says otherwise."""
        arr = np.asarray(data)
        if dtype is not None:
            return arr.astype(self._dtype(dtype), copy=False)
        if arr.dtype.kind == "f":
            return arr.astype(np.float32, copy=False)
        return arr

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def randn(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32).astype(self._dtype(dtype), copy=False)

    def rand(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._rng.random(shape, dtype=np.float32).astype(self._dtype(dtype), copy=False)

    def ones(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.ones(shape, self._dtype(dtype))

    def zeros(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.zeros(shape, self._dtype(dtype))

    def mean(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return np.mean(x, axis=axis, keepdims=keepdim)

    def sum(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return np.sum(x, axis=axis, keepdims=keepdim)

    def matmul(self, a: Any, b: Any) -> Any:
        return np.matmul(a, b)

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> GGMLProgram:
        extra = {k: v for k, v in options.extra.items() if k != "static_inference"}
        if extra:
            raise TypeError(f"ml.compile: unknown option(s) {sorted(extra)} for backend 'ggml'")
        return GGMLProgram(self, graph, options)
