"""Which layer classes the model file can hold, by the name written in the file.

The catalogue (`mithril.models`) is registered under each class's name; a third-party
layer registers with `register_layer`, by default under `module.QualifiedName`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar, overload

from ..errors import UnsupportedError
from ..models.base import Operator

__all__ = ["register_layer", "layer_name", "layer_class", "registered_layers"]

_L = TypeVar("_L", bound=type[Operator])
_BY_NAME: dict[str, type[Operator]] = {}
_BY_CLASS: dict[type[Operator], str] = {}


@overload
def register_layer(cls: _L, *, name: str | None = None) -> _L: ...
@overload
def register_layer(cls: None = None, *, name: str | None = None) -> Callable[[_L], _L]: ...
def register_layer(cls: _L | None = None, *, name: str | None = None) -> _L | Callable[[_L], _L]:
    """Register an `Operator` subclass for ml.save_model/ml.load_model; usable as a decorator.

    The layer is rebuilt by calling the class with the arguments it was constructed with,
    so those must be JSON values (None, bool, int, float, str, lists, tuples, dicts).
    """

    def add(layer: _L) -> _L:
        if not (inspect.isclass(layer) and issubclass(layer, Operator)) or layer is Operator:
            raise TypeError(f"register_layer: expected a subclass of mithril.models.Operator, got {layer!r}")
        key = name if name is not None else f"{layer.__module__}.{layer.__qualname__}"
        if not isinstance(key, str) or not key:
            raise TypeError(f"register_layer({layer.__name__}): name must be a non-empty str, got {key!r}")
        _catalogue()
        known = _BY_NAME.get(key)
        if known is not None and known is not layer:
            raise ValueError(
                f"register_layer({layer.__qualname__}): the name {key!r} is already taken by "
                f"{known.__module__}.{known.__qualname__}; pass another name="
            )
        _BY_NAME[key] = layer
        _BY_CLASS[layer] = key
        return layer

    return add if cls is None else add(cls)


def layer_name(cls: type[Operator]) -> str:
    """The name `cls` is written under; UnsupportedError naming it when it is not registered."""
    _catalogue()
    name = _BY_CLASS.get(cls)
    if name is None:
        raise UnsupportedError(
            f"ml.save_model: layer {cls.__module__}.{cls.__qualname__} is not registered for serialization; "
            "register it with mithril.serialization.register_layer"
        )
    return name


def layer_class(name: str) -> type[Operator]:
    """The class registered under `name`; UnsupportedError naming it when none is."""
    _catalogue()
    cls = _BY_NAME.get(name)
    if cls is None:
        raise UnsupportedError(
            f"ml.load_model: unknown layer {name!r}; import the module that registers it "
            "(mithril.serialization.register_layer) before loading"
        )
    return cls


def registered_layers() -> dict[str, type[Operator]]:
    """Every registered layer by its name in the file."""
    _catalogue()
    return dict(_BY_NAME)


def _catalogue() -> None:
    """Register the layers of `mithril.models` under their class names, once."""
    if _BY_CLASS:
        return
    from .. import models  # noqa: PLC0415 - the catalogue imports the model algebra only

    for export in models.__all__:
        cls = getattr(models, export)
        if inspect.isclass(cls) and issubclass(cls, Operator) and cls is not Operator and cls not in _BY_CLASS:
            _BY_NAME[cls.__name__] = cls
            _BY_CLASS[cls] = cls.__name__
    for cls in models.sequence.PARTS:  # the operators inside composite sequence layers (Concat, Where)
        _BY_NAME[cls.__qualname__] = cls
        _BY_CLASS[cls] = cls.__qualname__
