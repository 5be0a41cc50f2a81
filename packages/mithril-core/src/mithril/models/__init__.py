"""Logical models: `Model` for composition and the catalogue of layers."""

from .attention import *  # noqa: F403
from .attention import __all__ as _attention
from .base import BaseModel, Call, Connection, Init, KeySpec, Model, Operator
from .layers import *  # noqa: F403
from .layers import __all__ as _layers
from .sequence import *  # noqa: F403
from .sequence import __all__ as _sequence

__all__ = ["BaseModel", "Call", "Connection", "Init", "KeySpec", "Model", "Operator", *_layers, *_attention, *_sequence]
