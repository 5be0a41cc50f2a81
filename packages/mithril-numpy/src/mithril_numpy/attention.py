"""NumPy lowering of arange (the sequence primitives' only core member)."""

from __future__ import annotations

from collections.abc import Mapping

from mithril.backend import OpImpl
from mithril.graph import Node

__all__ = ["OPS"]


def arange(node: Node, a: Mapping[str, str]) -> str:
    """np.arange as int64: start, end, step, or as many values as `like` has along `dim`."""
    at = node.attrs
    if "like" not in a:
        return f"np.arange({at['start']!r}, {at['end']!r}, {at['step']!r}, dtype=np.int64)"
    end = f"{at['start']!r} + {at['step']!r} * np.shape({a['like']})[{at['dim']!r}]"
    return f"np.arange({at['start']!r}, {end}, {at['step']!r}, dtype=np.int64)"


OPS: dict[str, OpImpl] = {"arange": arange}
