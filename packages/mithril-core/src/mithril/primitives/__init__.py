"""Every primitive, declared once: signature, shape rule, gradient rule and decomposition.

`PRIMITIVES` maps names to declarations; `CORE_SET` names the primitives a backend must
lower to run every layer, forward and backward (docs/user-guide/core-set.md).
"""

from . import attention, elementwise, indexing, nn, structure, windows  # noqa: F401 - each module declares its primitives
from .builder import Applied, Builder
from .declaration import CORE_SET, PRIMITIVES, Port, Primitive, declare, get
from .transform import joint_graph

__all__ = ["Applied", "Builder", "CORE_SET", "PRIMITIVES", "Port", "Primitive", "declare", "get", "joint_graph"]
