"""Mithril: define a model once as a logical graph, compile it for any backend.

`import mithril` loads plugin metadata only; a backend's framework is imported the
first time that backend is used (`ml.TorchBackend` and friends resolve lazily).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import models, optim
from .backend import Backend
from .compiler import CompiledModel, compile
from .dtypes import DType, bfloat16, bool_, float16, float32, float64, int32, int64, promote
from .errors import (
    BackendNotFoundError,
    CollectiveError,
    CompositionError,
    DTypeMismatchError,
    IndexRangeError,
    KeyNotFoundError,
    MithrilError,
    ShapeError,
    UnsupportedError,
)
from .plugins import BackendInfo, hookimpl
from .plugins import registry as _registry
from .serialization import export_onnx, load_model, load_params, load_state, save_model, save_params

__version__ = "1.0.0.dev0"

bool = bool_  # noqa: A001 - `ml.bool` mirrors the framework spelling

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendNotFoundError",
    "CompiledModel",
    "CompositionError",
    "DType",
    "DTypeMismatchError",
    "CollectiveError",
    "IndexRangeError",
    "KeyNotFoundError",
    "MithrilError",
    "ShapeError",
    "UnsupportedError",
    "available_backends",
    "backend",
    "bfloat16",
    "bool",
    "compile",
    "export_onnx",
    "float16",
    "float32",
    "float64",
    "hookimpl",
    "int32",
    "int64",
    "load_model",
    "load_params",
    "load_state",
    "models",
    "optim",
    "promote",
    "register_plugin",
    "save_model",
    "save_params",
    "serialization",
]


def available_backends() -> dict[str, BackendInfo]:
    """Installed backends by name, with the distribution and version that provide them.

    A plugin that failed to import is listed too, with its error in `.error`.
    """
    return _registry.available()


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin module or object by hand (for example with autoloading disabled)."""
    _registry.register_plugin(plugin, name)


def backend(name: str, **options: Any) -> Backend:
    """Create a backend by its registered name: `ml.backend("numpy", dtype=ml.float64)`."""
    cls: type[Backend] = _registry.backend_class(name)
    return cls(**options)


_TRAINING = ("Trainer", "TrainState", "training")


def __getattr__(name: str) -> Any:
    if name in _TRAINING:  # imported on first use: training needs NumPy, `import mithril` does not
        training = importlib.import_module(f"{__name__}.training")
        return training if name == "training" else getattr(training, name)
    if name.endswith("Backend") and not name.startswith("_"):
        return _registry.backend_class(name)
    raise AttributeError(f"module 'mithril' has no attribute {name!r}")
