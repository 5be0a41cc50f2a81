"""Batches for `Trainer.fit`, `evaluate` and `predict`: from (inputs, targets) arrays or an iterable of dicts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..backend import Backend

__all__ = ["Batches", "as_columns"]


def as_columns(
    data: Any, input_keys: Sequence[str], target_keys: Sequence[str], backend: Backend, owner: str
) -> dict[str, np.ndarray] | None:
    """`data` as NumPy columns keyed by batch key, or None when it is an iterable of batch dicts.

    Accepted: a dict of arrays; an `(inputs, targets)` pair, each an array (for the single input
    or target key) or a dict of arrays; a bare array of inputs (for predict). Arrays may belong to
    any backend or to NumPy.
    """
    if isinstance(data, Mapping):
        columns = dict(data)
    elif isinstance(data, tuple) and len(data) in (1, 2):
        columns = {**_named(data[0], input_keys, "inputs", owner)}
        if len(data) == 2:
            columns.update(_named(data[1], target_keys, "targets", owner))
    elif _is_array(data, backend):
        columns = _named(data, input_keys, "inputs", owner)
    elif isinstance(data, Iterable):
        return None
    else:
        raise TypeError(
            f"{owner}: data must be an (inputs, targets) pair of arrays, a dict of arrays or an iterable "
            f"of batch dicts, got {type(data).__name__}"
        )
    out = {key: np.asarray(backend.to_numpy(v) if backend.is_array(v) else v) for key, v in columns.items()}
    lengths = {key: (len(v) if v.ndim else None) for key, v in out.items()}
    if len(set(lengths.values())) > 1 or None in lengths.values():
        raise ValueError(f"{owner}: every array must have the same number of rows (the batch axis), got {lengths}")
    return out


def _named(value: Any, keys: Sequence[str], what: str, owner: str) -> dict[str, Any]:
    """One array for the single key of `keys`, or a dict keyed by them."""
    if isinstance(value, Mapping):
        return dict(value)
    if len(keys) != 1:
        raise TypeError(f"{owner}: the model has {what} {list(keys)}; give {what} as a dict keyed by them")
    return {keys[0]: value}


def _is_array(value: Any, backend: Backend) -> bool:
    return isinstance(value, np.ndarray) or backend.is_array(value) or hasattr(value, "__array__")


class Batches:
    """Batches of columns, optionally shuffled by a seed; every batch a dict of backend arrays."""

    def __init__(
        self,
        columns: Mapping[str, np.ndarray],
        batch_size: int,
        backend: Backend,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        owner: str = "ml.Trainer",
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"{owner}: batch_size must be a positive int, got {batch_size!r}")
        self.columns = columns
        self.rows = len(next(iter(columns.values()))) if columns else 0
        self.batch_size = batch_size
        self.backend = backend
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """The batches of epoch `epoch` (0-based); shuffled orders depend on the seed and the epoch only."""
        order = np.arange(self.rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed or 0, epoch]).permutation(self.rows)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {key: self.backend.array(column[rows]) for key, column in self.columns.items()}
