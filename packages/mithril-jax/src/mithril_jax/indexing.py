"""JAX lowerings of the indexing primitives; shapes are static under jit, so indices resolve at trace time."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mithril.primitives.indexing import python_index

__all__ = ["slice_", "slice_grad", "gather", "gather_grad"]


def slice_(x: jax.Array, index: tuple[Any, ...]) -> jax.Array:
    """x[index] with Python's rules."""
    return x[python_index(index, x.shape)]


def slice_grad(g: jax.Array, like: jax.Array, index: tuple[Any, ...]) -> jax.Array:
    """Zeros shaped like `like` holding `g` at like[index]."""
    return jnp.zeros(jnp.shape(like), g.dtype).at[python_index(index, jnp.shape(like))].set(g)


def _grid(index: jax.Array, axis: int) -> tuple[Any, ...]:
    grids: list[Any] = list(jnp.indices(index.shape, sparse=True))
    grids[axis] = index
    return tuple(grids)


def gather(x: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """torch.gather(x, axis, index): the index may be smaller than x off `axis`."""
    return x[_grid(index, axis % x.ndim)]


def gather_grad(g: jax.Array, index: jax.Array, like: jax.Array, axis: int) -> jax.Array:
    """Zeros shaped like `like` with `g` added at `index` along `axis`."""
    return jnp.zeros(jnp.shape(like), g.dtype).at[_grid(index, axis % jnp.ndim(like))].add(g)
