"""Values derived once from objects promised unchanged (frozen weights), kept exactly as long as those live.

A backend may store a frozen weight in another form (torch: a transposed copy; GGML: its quantized
blocks). Deriving it once per weight, rather than per call or per compiled program, is safe only
because the weight is promised unchanged; tying the derived value to the weight's lifetime (a weak
reference's callback) keeps memory following the weights the caller holds.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["DerivedValues"]

T = TypeVar("T")


class DerivedValues:
    """{(object, tag): value}, computed once by `get` and dropped when the object is collected; thread-safe."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, Hashable], tuple[weakref.ref[Any], Any]] = {}
        # reentrant: a collection during a locked step may run another object's `forget` on this thread
        self._lock = threading.RLock()

    def get(self, owner: Any, tag: Hashable, make: Callable[[], T]) -> T:
        """The value `make()` derived from `owner` under `tag`: made at the first request, then the same object."""
        key = (id(owner), tag)
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and hit[0]() is owner:
                value: T = hit[1]
                return value
        value = make()  # outside the lock: deriving may take long (quantizing a large weight)

        def forget(ref: weakref.ref[Any]) -> None:
            with self._lock:
                if self._values.get(key, (None,))[0] is ref:
                    del self._values[key]

        with self._lock:
            self._values[key] = (weakref.ref(owner, forget), value)
        return value

    def __contains__(self, key: tuple[int, Hashable]) -> bool:
        """Whether a value is kept for (id of a live object, tag)."""
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
