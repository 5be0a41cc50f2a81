"""Array helpers for backends whose arrays are host NumPy arrays (NumPy, GGML, tracers).

Imported by those plugins only, so `import mithril` still loads no array library.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dtypes
from .array_math import ArrayMath
from .dtypes import DType

if TYPE_CHECKING:
    from .optim.foreach import Foreach

__all__ = ["HostArrays", "NUMPY_DTYPES"]

NUMPY_DTYPES: dict[DType, np.dtype[Any]] = {
    dtypes.float16: np.dtype(np.float16),
    dtypes.float32: np.dtype(np.float32),
    dtypes.float64: np.dtype(np.float64),
    dtypes.int32: np.dtype(np.int32),
    dtypes.int64: np.dtype(np.int64),
    dtypes.bool_: np.dtype(np.bool_),
}
_CORE = {v: k for k, v in NUMPY_DTYPES.items()}


class HostArrays(ArrayMath):
    """The user-facing array helpers on NumPy arrays in the backend's dtype, with a seeded generator.

    Mixed into a `Backend` subclass (before it): needs `self.dtype`, and `self._rng` set in `__init__`.
    """

    xp = np
    array_type = "numpy.ndarray"
    dtype: DType
    _rng: np.random.Generator

    def native_dtype(self, dtype: DType) -> Any:
        return NUMPY_DTYPES[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        return _CORE.get(getattr(array, "dtype", None))  # type: ignore[arg-type]

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def _np_dtype(self, dtype: DType | None) -> np.dtype[Any]:
        return NUMPY_DTYPES[self.dtype if dtype is None else dtypes.as_dtype(dtype)]

    def array(self, data: Any, dtype: DType | None = None) -> np.ndarray:
        """A NumPy array; floating data takes the backend dtype unless `dtype` says otherwise."""
        arr = np.asarray(data)
        if dtype is not None or arr.dtype.kind in "fV":
            return arr.astype(self._np_dtype(dtype), copy=False)
        return arr

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def foreach_ops(self) -> Foreach:
        """NumPy's list-wise math, joining each list into one array: one call per operation, not per parameter."""
        from .optim.foreach import NamespaceForeach  # noqa: PLC0415 - ml.optim imports the backend module

        return NamespaceForeach(np, joins=True)

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def rng_state(self) -> np.ndarray:
        """The generator's state (NumPy's bit-generator dict) as JSON bytes in a uint8 array."""
        return np.frombuffer(json.dumps(self._rng.bit_generator.state).encode(), np.uint8).copy()

    def set_rng_state(self, state: Any) -> None:
        generator = np.random.default_rng()
        generator.bit_generator.state = json.loads(np.asarray(state, np.uint8).tobytes().decode())
        self._rng = generator

    def _draw(self, draw: Any, shape: tuple[int, ...], dtype: DType | None) -> np.ndarray:
        dt = self._np_dtype(dtype)
        native = dt if dt in (np.float32, np.float64) else np.dtype(np.float32)
        return draw(shape, dtype=native).astype(dt, copy=False)

    def randn(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._draw(self._rng.standard_normal, shape, dtype)

    def rand(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._draw(self._rng.random, shape, dtype)

    def ones(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.ones(shape, self._np_dtype(dtype))

    def zeros(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.zeros(shape, self._np_dtype(dtype))
