"""The list-wise array math the optimizers are written in, and its generic NumPy-like implementation.

Each backend answers `backend.foreach_ops()`; the default (this module's `NamespaceForeach`)
works on any module with NumPy's API (numpy, jax.numpy, also under `jax.jit` with traced
scalars); torch overrides it with `torch._foreach_*` kernels. Every operation returns new
arrays and leaves its inputs untouched. A scalar argument is a Python number or a 0-d array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from operator import is_
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backend import Backend
    from .base import Optimizer
    from .traced import TracedRule

__all__ = ["Foreach", "NamespaceForeach", "foreach_ops"]

# Exactly these types are weakly typed scalars for numpy and jax (np.float64, a float subclass, is not).
_PYTHON_NUMBERS = (int, float, bool)


class Foreach(ABC):
    """Operations on lists of same-length arrays (`xs`, `ys`, `zs`), element i with element i.

    `other` is a list of arrays or one scalar applied to every array.
    """

    @abstractmethod
    def add(self, xs: Sequence[Any], other: Any, alpha: Any = 1.0) -> list[Any]:
        """xs + alpha * other."""

    @abstractmethod
    def mul(self, xs: Sequence[Any], other: Any) -> list[Any]:
        """xs * other."""

    @abstractmethod
    def div(self, xs: Sequence[Any], other: Any) -> list[Any]:
        """xs / other."""

    @abstractmethod
    def sqrt(self, xs: Sequence[Any]) -> list[Any]:
        """Elementwise square root."""

    @abstractmethod
    def maximum(self, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        """Elementwise maximum of two lists."""

    @abstractmethod
    def addcmul(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        """xs + value * ys * zs (torch.addcmul)."""

    @abstractmethod
    def addcdiv(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        """xs + value * ys / zs (torch.addcdiv)."""

    @abstractmethod
    def lerp(self, xs: Sequence[Any], ys: Sequence[Any], weight: float) -> list[Any]:
        """xs + weight * (ys - xs), with torch.lerp's rounding (from ys's side when weight >= 0.5)."""

    @abstractmethod
    def zeros_like(self, xs: Sequence[Any]) -> list[Any]:
        """New zero arrays shaped like xs (optimizer state at init)."""

    @abstractmethod
    def where(self, cond: Any, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        """xs where the scalar `cond` (a bool, or a 0-d boolean array, possibly traced) holds, else ys.

        A Python bool returns the chosen list itself; an array condition selects into new arrays.
        """

    @abstractmethod
    def global_norm(self, xs: Sequence[Any]) -> Any:
        """The 2-norm of all arrays together, as a 0-d array: sqrt of the sum of per-array norms squared."""

    @abstractmethod
    def clamp_max(self, scalar: Any, maximum: float) -> Any:
        """min(scalar, maximum) for a 0-d array (gradient clipping's coefficient)."""

    @abstractmethod
    def scalar(self, value: Any, like: Any) -> Any:
        """A 0-d array `value` (a traced step count) in the dtype of array `like`; Python numbers unchanged."""

    def run_rule(
        self, optimizer: Optimizer, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        """`optimizer.rule` with this math: (new params, new state per slot). A backend may run it compiled."""
        return optimizer.rule(params, grads, state, step, lr, self)

    def join(self, groups: Sequence[Sequence[Any]]) -> list[list[Any]] | None:
        """Each list of `groups` as a one-array list, for elementwise rules to run in fewer calls; None keeps them.

        The lists hold arrays of the same shapes, in order, and one dtype; `split` undoes it.
        By default nothing is joined (torch's foreach kernels and `jax.jit` batch already).
        """
        return None

    def split(self, joined: Any, like: Sequence[Any]) -> list[Any]:
        """`joined` (one array from `join`'s layout) as arrays shaped like `like`: views, no copies."""
        raise NotImplementedError(f"{type(self).__name__} joins nothing, so it splits nothing")


class NamespaceForeach(Foreach):
    """`Foreach` for arrays with Python operators and a NumPy-like module `xp` (numpy, jax.numpy).

    0-d array scalars are cast to each array's dtype, so a float64 learning rate never promotes
    float32 parameters; Python numbers stay weakly typed. `joins`: `join` concatenates lists of
    several arrays into one flat copy (NumPy: one call per operation instead of one per array).
    """

    def __init__(self, xp: Any, *, joins: bool = False) -> None:
        self.xp = xp
        self.joins = joins
        # {id(first view): (views, flat)} for the arrays the last update's `split` returned, so the next
        # `join` reuses their flat array: the views are held, so the ids and the identity test stay sound
        self._splits: dict[int, tuple[tuple[Any, ...], Any]] = {}
        self._traced: dict[int, tuple[Optimizer, TracedRule | None]] = {}  # rules on joined arrays, made once

    def run_rule(
        self, optimizer: Optimizer, params: list[Any], grads: list[Any], state: dict[str, list[Any]], step: Any, lr: Any
    ) -> tuple[list[Any], dict[str, list[Any]]]:
        """On one-array lists (joined), the rule as generated straight-line code (optim/traced.py): the same
        expressions, bit for bit, without the per-operation dispatch."""
        if not self.joins or len(params) != 1:
            return optimizer.rule(params, grads, state, step, lr, self)
        held, traced = self._traced.get(id(optimizer), (None, None))
        if held is not optimizer:  # keyed by identity: equal optimizers may still differ in what their rule reads
            from .traced import trace_rule  # noqa: PLC0415 - traced.py subclasses NamespaceForeach

            traced = trace_rule(optimizer, self)
            self._traced[id(optimizer)] = (optimizer, traced)
        if traced is None:
            return optimizer.rule(params, grads, state, step, lr, self)
        return traced(params[0], grads[0], *(state[slot][0] for slot in optimizer.slots), step, lr)

    def __repr__(self) -> str:
        return f"NamespaceForeach({getattr(self.xp, '__name__', self.xp)!r})"

    def scalar(self, value: Any, like: Any) -> Any:
        if type(value) in _PYTHON_NUMBERS:
            return value
        return self.xp.asarray(value, dtype=like.dtype)

    def join(self, groups: Sequence[Sequence[Any]]) -> list[list[Any]] | None:
        splits, self._splits = self._splits, {}
        first = groups[0]
        if not self.joins or len(first) < 2:
            return None
        shapes, dtypes = [x.shape for x in first], [first[0].dtype] * len(first)
        flats = []
        for group in groups:
            views, flat = splits.get(id(group[0]), ((), None))
            if len(views) == len(group) and all(map(is_, group, views)):
                if [x.shape for x in views] != shapes or flat.dtype != dtypes[0]:
                    return None
            elif [x.shape for x in group] != shapes or [x.dtype for x in group] != dtypes:
                return None
            else:
                flat = self.xp.concatenate(group, axis=None)
            flats.append([flat])
        return flats

    def split(self, joined: Any, like: Sequence[Any]) -> list[Any]:
        out, start = [], 0
        for x in like:
            end = start + x.size
            piece = joined[start:end]
            out.append(piece if x.ndim == 1 else piece.reshape(x.shape))
            start = end
        if self.joins and out and start == joined.size:  # views covering all of `joined`, in order
            self._splits[id(out[0])] = (tuple(out), joined)
        return out

    def add(self, xs: Sequence[Any], other: Any, alpha: Any = 1.0) -> list[Any]:
        if isinstance(other, (list, tuple)):
            if type(alpha) in _PYTHON_NUMBERS and alpha == 1:
                return [x + y for x, y in zip(xs, other)]
            return [x + self.scalar(alpha, x) * y for x, y in zip(xs, other)]
        return [x + self.scalar(other, x) * self.scalar(alpha, x) for x in xs]

    def mul(self, xs: Sequence[Any], other: Any) -> list[Any]:
        if isinstance(other, (list, tuple)):
            return [x * y for x, y in zip(xs, other)]
        return [x * self.scalar(other, x) for x in xs]

    def div(self, xs: Sequence[Any], other: Any) -> list[Any]:
        if isinstance(other, (list, tuple)):
            return [x / y for x, y in zip(xs, other)]
        return [x / self.scalar(other, x) for x in xs]

    def sqrt(self, xs: Sequence[Any]) -> list[Any]:
        return [self.xp.sqrt(x) for x in xs]

    def maximum(self, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        return [self.xp.maximum(x, y) for x, y in zip(xs, ys)]

    def addcmul(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        return [x + self.scalar(value, x) * y * z for x, y, z in zip(xs, ys, zs)]

    def addcdiv(self, xs: Sequence[Any], ys: Sequence[Any], zs: Sequence[Any], value: Any = 1.0) -> list[Any]:
        return [x + self.scalar(value, x) * y / z for x, y, z in zip(xs, ys, zs)]

    def lerp(self, xs: Sequence[Any], ys: Sequence[Any], weight: float) -> list[Any]:
        if weight < 0.5:
            return [x + weight * (y - x) for x, y in zip(xs, ys)]
        return [y - (y - x) * (1 - weight) for x, y in zip(xs, ys)]

    def zeros_like(self, xs: Sequence[Any]) -> list[Any]:
        return [self.xp.zeros_like(x) for x in xs]

    def where(self, cond: Any, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        if isinstance(cond, bool):
            return list(xs if cond else ys)
        return [self.xp.where(cond, x, y) for x, y in zip(xs, ys)]

    def global_norm(self, xs: Sequence[Any]) -> Any:
        xp = self.xp
        norms = [xp.sqrt(xp.sum(x * x)) for x in xs]
        if not norms:
            return xp.asarray(0.0)
        stacked = xp.stack([xp.asarray(n, dtype=norms[0].dtype) for n in norms])
        return xp.sqrt(xp.sum(stacked * stacked))

    def clamp_max(self, scalar: Any, maximum: float) -> Any:
        return self.xp.minimum(scalar, maximum)


def foreach_ops(backend: Backend) -> Foreach:
    """The list-wise array math of `backend`, for `Optimizer.init`, `Optimizer.update` and `clip_grad_norm`."""
    from ..backend import Backend  # noqa: PLC0415 - backend.py imports this module lazily too

    if not isinstance(backend, Backend):
        raise TypeError(f"ml.optim.foreach_ops: expected a backend such as ml.backend('numpy'), got {backend!r}")
    return backend.foreach_ops()
