"""The NumPy backend: CPU only, float16/32/64, gradients from VJP rules."""

from __future__ import annotations

from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions
from mithril.dtypes import DType
from mithril.graph import Graph

from .lowering import NumpyProgram
from .ops import OPS

__all__ = ["NumpyBackend"]

_NATIVE = {
    ml.float16: np.dtype(np.float16),
    ml.float32: np.dtype(np.float32),
    ml.float64: np.dtype(np.float64),
    ml.int32: np.dtype(np.int32),
    ml.int64: np.dtype(np.int64),
    ml.bool: np.dtype(np.bool_),
}
_CORE = {v: k for k, v in _NATIVE.items()}


class NumpyBackend(Backend):
    """Runs compiled models as generated NumPy code on the CPU."""

    name = "numpy"
    supported_dtypes = (ml.float16, ml.float32, ml.float64)
    supports_gradients = True
    supports_jit = False
    ops = OPS

    def __init__(self, dtype: DType | str = ml.float32, device: str = "cpu", **options: Any) -> None:
        self.reject_unknown(options)
        if device != "cpu":
            raise ValueError(f"NumpyBackend: device {device!r} is not available; NumPy runs on 'cpu' only")
        super().__init__(dtype, device)
        self._native = _NATIVE[self.dtype]
        self._rng = np.random.default_rng()

    # -- dtypes ----------------------------------------------------------------------
    def native_dtype(self, dtype: DType) -> Any:
        return _NATIVE[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        return _CORE.get(getattr(array, "dtype", None))  # type: ignore[arg-type]

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def _dtype(self, dtype: DType | None) -> np.dtype:
        return self._native if dtype is None else _NATIVE[ml.dtypes.as_dtype(dtype)]

    # -- array helpers ---------------------------------------------------------------
    def array(self, data: Any, dtype: DType | None = None) -> np.ndarray:
        """A NumPy array; floating data takes the backend dtype unless `dtype` says otherwise."""
        arr = np.asarray(data)
        if dtype is not None:
            return arr.astype(self._dtype(dtype), copy=False)
        if arr.dtype.kind == "f" or arr.dtype.kind == "V":
            return arr.astype(self._native, copy=False)
        return arr

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def randn(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        dt = self._dtype(dtype)
        draw_dt = dt if dt in (np.float32, np.float64) else np.float32
        return self._rng.standard_normal(shape, dtype=draw_dt).astype(dt, copy=False)

    def rand(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        dt = self._dtype(dtype)
        draw_dt = dt if dt in (np.float32, np.float64) else np.float32
        return self._rng.random(shape, dtype=draw_dt).astype(dt, copy=False)

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

    def exp(self, x: Any) -> Any:
        return np.exp(x)

    def log(self, x: Any) -> Any:
        return np.log(x)

    def sqrt(self, x: Any) -> Any:
        return np.sqrt(x)

    def abs(self, x: Any) -> Any:
        return np.abs(x)

    def max(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return np.max(x, axis=axis, keepdims=keepdim)

    def argmax(self, x: Any, axis: int | None = None) -> Any:
        return np.argmax(x, axis=axis)

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        return np.reshape(x, shape)

    def transpose(self, x: Any, axes: tuple[int, ...] | None = None) -> Any:
        return np.transpose(x, axes)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return np.concatenate(arrays, axis=axis)

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> NumpyProgram:
        if options.extra:
            raise TypeError(f"ml.compile: unknown option(s) {sorted(options.extra)} for backend 'numpy'")
        return NumpyProgram(self, graph, options)
