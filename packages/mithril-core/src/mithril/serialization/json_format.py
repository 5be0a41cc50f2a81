"""The model file: a logical model (architecture only) as JSON, with a format version.

A layer is written as its registered name and the arguments it was constructed with; a
composite model as its name and, per child in order, `|=` or `+=` and the names the child
was called with. Loading replays that composition, so keys, nesting, shared weights and
the canonical input and output come out as they were.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from typing import Any

from ..errors import MithrilError, UnsupportedError
from ..models.base import BaseModel, Model, Operator
from .files import readable_path, writable_path, write_atomically
from .registry import layer_class, layer_name

__all__ = ["FORMAT", "FORMAT_VERSION", "FormatError", "save_model", "load_model", "model_to_dict", "model_from_dict"]

FORMAT = "mithril.model"
FORMAT_VERSION = 1


class FormatError(MithrilError, ValueError):
    """A file is not in the format expected, or holds something this Mithril cannot read."""


def save_model(model: BaseModel, path: str | os.PathLike[str]) -> None:
    """Write `model`'s architecture (no weights) to `path` as JSON; nothing is written if any part fails."""
    target = writable_path("ml.save_model", path)
    text = json.dumps(model_to_dict(model), indent=1)
    write_atomically(target, (text + "\n").encode())


def load_model(path: str | os.PathLike[str]) -> BaseModel:
    """Read a model written by `save_model`."""
    source = readable_path("ml.load_model", path)
    try:
        data = json.loads(source.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"ml.load_model: {str(source)!r} is not a Mithril model file (not JSON: {exc})") from None
    try:
        return model_from_dict(data)
    except FormatError as exc:
        raise FormatError(f"ml.load_model({str(source)!r}): {exc}") from None


def model_to_dict(model: BaseModel) -> dict[str, Any]:
    """The JSON document of `model`: format, version, the Mithril version and the model tree."""
    from .. import __version__  # noqa: PLC0415 - the package imports this module

    if not isinstance(model, BaseModel):
        raise TypeError(f"ml.save_model: expected a Mithril model, got {type(model).__name__}")
    return {"format": FORMAT, "version": FORMAT_VERSION, "mithril_version": __version__, "model": _node(model)}


def model_from_dict(data: Any) -> BaseModel:
    """Rebuild the model of a document made by `model_to_dict`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FormatError(f"not a Mithril model file (expected 'format': {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"the format version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"format version {version} was written by a newer Mithril ({data.get('mithril_version')}); "
            f"this Mithril reads versions up to {FORMAT_VERSION}"
        )
    return _build(data.get("model"), "model")


# -- writing ---------------------------------------------------------------------------
def _node(model: BaseModel) -> dict[str, Any]:
    if isinstance(model, Operator):
        return _layer(model)
    if isinstance(model, Model):
        children = [
            {"op": op, "links": dict(links), "model": _node(child)}
            for child, (op, links) in zip(model.children, model.composition)
        ]
        node: dict[str, Any] = {"type": "Model", "name": model.name, "children": children}
        if type(model) is not Model:
            node["class"] = f"{type(model).__module__}.{type(model).__qualname__}"  # for readers; loads as Model
        return node
    raise UnsupportedError(f"ml.save_model: cannot write {model.describe()}: neither a layer nor a Model")


def _layer(op: Operator) -> dict[str, Any]:
    name = layer_name(type(op))
    args, kwargs = op.init_args
    where = f"{op.describe()} (layer {name!r})"
    signature = inspect.signature(type(op).__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)  # None stands for self
    except TypeError as exc:
        raise UnsupportedError(f"ml.save_model: {where}: its constructor arguments do not bind ({exc})") from None
    del bound.arguments[next(iter(signature.parameters))]
    simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in list(signature.parameters.values())[1:])
    node: dict[str, Any] = {"type": name}
    if simple:
        node["arguments"] = {k: encode(v, f"{where} argument {k!r}") for k, v in bound.arguments.items()}
    else:
        node["args"] = [encode(v, f"{where} argument {i}") for i, v in enumerate(bound.args)]
        node["kwargs"] = {k: encode(v, f"{where} argument {k!r}") for k, v in bound.kwargs.items()}
    node["attrs"] = {k: encode(v, f"{where} attribute {k!r}") for k, v in op.attrs.items() if not k.startswith("_")}
    return node


def encode(value: Any, where: str) -> Any:
    """A JSON value for `value`: tuples and dicts are tagged so that they read back as written."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, list):
        return [encode(v, where) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, where) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, where) for k, v in value.items()}}
    raise UnsupportedError(
        f"ml.save_model: {where} is {value!r} ({type(value).__name__}); the model file holds only "
        "None, bool, int, float, str, lists, tuples and dicts with str keys"
    )


def decode(value: Any, where: str) -> Any:
    """The Python value of an `encode`d JSON value."""
    if isinstance(value, list):
        return [decode(v, where) for v in value]
    if isinstance(value, dict):
        if value.keys() == {"tuple"} and isinstance(value["tuple"], list):
            return tuple(decode(v, where) for v in value["tuple"])
        if value.keys() == {"dict"} and isinstance(value["dict"], dict):
            return {k: decode(v, where) for k, v in value["dict"].items()}
        if value.keys() == {"float"} and value["float"] in ("inf", "-inf", "nan"):
            return float(value["float"])
        raise FormatError(f"{where}: unknown value {value!r}")
    return value


# -- reading ---------------------------------------------------------------------------
def _build(node: Any, where: str) -> BaseModel:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise FormatError(f"{where}: expected an object with a 'type', got {node!r}")
    if node["type"] == "Model":
        return _build_model(node, where)
    return _build_layer(node, where)


def _build_model(node: dict[str, Any], where: str) -> Model:
    name, children = node.get("name"), node.get("children")
    if not (name is None or isinstance(name, str)) or not isinstance(children, list):
        raise FormatError(f"{where}: a Model needs 'name' (str or null) and 'children' (a list)")
    model = Model(name=name)
    for index, entry in enumerate(children):
        at = f"{where}.children[{index}]"
        if (
            not isinstance(entry, dict)
            or entry.get("op") not in ("|=", "+=")
            or not isinstance(entry.get("links"), dict)
        ):
            raise FormatError(f"{at}: expected {{'op': '|=' or '+=', 'links': {{...}}, 'model': {{...}}}}")
        child = _build(entry.get("model"), at)
        links = entry["links"]
        call = child(**links) if links else child
        if entry["op"] == "+=":
            model += call
        else:
            model |= call
    return model


def _build_layer(node: dict[str, Any], where: str) -> Operator:
    cls = layer_class(node["type"])
    at = f"{where} (layer {node['type']!r})"
    args, kwargs = node.get("args", []), node.get("arguments", node.get("kwargs", {}))
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise FormatError(f"{at}: 'args' must be a list and 'arguments' (or 'kwargs') an object")
    args = [decode(v, at) for v in args]
    kwargs = {k: decode(v, at) for k, v in kwargs.items()}
    try:
        layer = cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{at}: cannot construct it from the arguments in the file: {exc}") from None
    saved = node.get("attrs")
    if saved is not None:
        rebuilt = {k: encode(v, at) for k, v in layer.attrs.items() if not k.startswith("_")}
        if rebuilt != saved:
            raise FormatError(
                f"{at}: rebuilt from its arguments it has attributes {rebuilt}, but the file says {saved}; "
                "the layer's constructor has changed since the file was written"
            )
    return layer
