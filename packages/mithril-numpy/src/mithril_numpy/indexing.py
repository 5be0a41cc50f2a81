"""NumPy kernels of the indexing primitives (slice, slice_grad, gather, gather_grad, concat)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril.codegen import static_shape
from mithril.graph import Node
from mithril.primitives.indexing import python_index

__all__ = ["slice_", "slice_grad", "gather", "gather_grad", "emit_slice", "emit_slice_grad"]


def _grid(index: np.ndarray, axis: int) -> tuple[Any, ...]:
    """The full index tuple that puts `index` on `axis` and each other axis's position elsewhere."""
    grids = list(np.indices(index.shape, sparse=True))
    grids[axis] = index
    return tuple(grids)


def slice_(x: np.ndarray, index: tuple[Any, ...]) -> np.ndarray:
    """x[index] for a normalized index resolved against x's shape."""
    return x[python_index(index, x.shape)]


def slice_grad(g: np.ndarray, like: np.ndarray, index: tuple[Any, ...]) -> np.ndarray:
    """Zeros shaped like `like` holding `g` at like[index]."""
    out = np.zeros(np.shape(like), dtype=g.dtype)
    out[python_index(index, out.shape)] = g
    return out


def gather(x: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """torch.gather(x, axis, index)."""
    axis %= x.ndim
    return x[_grid(index, axis)]


def gather_grad(g: np.ndarray, index: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    """Zeros shaped like `like` with `g` added at `index` along `axis` (repeated indices add)."""
    out = np.zeros(np.shape(like), dtype=g.dtype)
    np.add.at(out, _grid(index, axis % out.ndim), g)
    return out


def _literal(node: Node, key: str) -> str | None:
    """The resolved index as source text when the indexed shape is known at compile time."""
    shape = static_shape(node.inputs[key])
    if shape is None or None in shape:
        return None
    return repr(python_index(node.attrs["index"], shape))  # type: ignore[arg-type]


def emit_slice(node: Node, a: Mapping[str, str]) -> str:
    """x[literal index] for static shapes, else the run-time kernel."""
    literal = _literal(node, "input")
    if literal is None:
        return f"_ix.slice_({a['input']}, {node.attrs['index']!r})"
    return f"{a['input']}[{literal}]"


def emit_slice_grad(node: Node, a: Mapping[str, str]) -> str:
    return f"_ix.slice_grad({a['input']}, {a['like']}, {node.attrs['index']!r})"
