"""The math helpers of backends whose array module follows NumPy's API (numpy, jax.numpy).

A backend mixes `ArrayMath` in and names its module as `xp`; this module imports none.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ArrayMath"]


class ArrayMath:
    """Backend helpers (reductions, matmul, elementwise math, reshapes) forwarded to `self.xp`."""

    xp: Any

    def mean(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return self.xp.mean(x, axis=axis, keepdims=keepdim)

    def sum(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return self.xp.sum(x, axis=axis, keepdims=keepdim)

    def max(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return self.xp.max(x, axis=axis, keepdims=keepdim)

    def argmax(self, x: Any, axis: int | None = None) -> Any:
        return self.xp.argmax(x, axis=axis)

    def matmul(self, a: Any, b: Any) -> Any:
        return self.xp.matmul(a, b)

    def exp(self, x: Any) -> Any:
        return self.xp.exp(x)

    def log(self, x: Any) -> Any:
        return self.xp.log(x)

    def sqrt(self, x: Any) -> Any:
        return self.xp.sqrt(x)

    def abs(self, x: Any) -> Any:
        return self.xp.abs(x)

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        return self.xp.reshape(x, shape)

    def transpose(self, x: Any, axes: tuple[int, ...] | None = None) -> Any:
        return self.xp.transpose(x, axes)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.xp.concatenate(arrays, axis=axis)
