"""Logical models: `Model` for composition and the catalogue of layers."""

from .base import BaseModel, Call, Connection, Init, KeySpec, Model, Operator
from .layers import *  # noqa: F403
from .layers import __all__ as _layers

__all__ = ["BaseModel", "Call", "Connection", "Init", "KeySpec", "Model", "Operator", *_layers]
