"""`ml.export_onnx`: the inference form of a model as an ONNX file, written with the `onnx` package.

The model is flattened in inference form (BatchNorm with running statistics, dropout as
identity), its shapes solved from `shapes` and the parameters' own shapes, primitives
without an ONNX emitter (`onnx_ops.OPS`) decomposed, then each node emitted. Parameters
and state become initializers in float32; a `None` in `shapes` becomes a symbolic dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import KeyNotFoundError, UnsupportedError
from ..graph import Edge, Graph, flatten
from ..models.base import BaseModel
from ..primitives.declaration import PRIMITIVES
from ..shapes import Renderer
from .files import writable_path, write_atomically
from .onnx_ops import OPS, Context
from .params_io import _host

__all__ = ["export_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization


def export_onnx(
    model: BaseModel,
    path: str | os.PathLike[str],
    params: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
    opset: int | None = None,
) -> None:
    """Write `model` with `params` (and `state`, e.g. BatchNorm statistics) as an ONNX inference model.

    The file passes `onnx.checker.check_model(full_check=True)`; a layer ONNX cannot
    express is an UnsupportedError naming it, raised before anything is written.
    """
    try:
        import onnx  # noqa: PLC0415 - the optional dependency
    except ImportError:
        raise UnsupportedError(
            'ml.export_onnx needs the onnx package: pip install "mithril[onnx]" (or pip install onnx)'
        ) from None
    if not isinstance(model, BaseModel):
        raise TypeError(f"ml.export_onnx: expected a Mithril model, got {type(model).__name__}")
    owner = model.describe()
    version = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(version, bool) or not isinstance(version, int) or not MIN_OPSET <= version <= newest:
        raise ValueError(f"ml.export_onnx({owner}): opset must be an int from {MIN_OPSET} to {newest}, got {opset!r}")
    target = writable_path("ml.export_onnx", path)
    graph = _graph(model, owner, params, state or {}, shapes or {})
    proto = _build(onnx, graph, owner, version, params, state or {})
    onnx.checker.check_model(proto, full_check=True)
    write_atomically(target, proto.SerializeToString())


def _graph(
    model: BaseModel,
    owner: str,
    params: Mapping[str, Any],
    state: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int | None]],
) -> Graph:
    """The inference graph with shapes solved and every primitive one `OPS` emits."""
    from ..compiler import _apply_shapes  # noqa: PLC0415 - the compiler's own shape step
    from ..primitives.transform import decompose  # noqa: PLC0415

    graph = flatten(model, copy=True, inference=True)
    _check_keys(owner, "params", params, [e.name for e in graph.params])
    _check_keys(owner, "state", state, [e.name for e in graph.state])
    known = {key: list(np.shape(value)) for key, value in {**params, **state}.items()}
    _apply_shapes(graph, {**known, **shapes})
    for node in graph.nodes:
        if node.primitive not in OPS and PRIMITIVES[node.primitive].decomposition is None:
            layer = node.op.describe() if node.op is not None else repr(node.path)
            raise UnsupportedError(
                f"ml.export_onnx({owner}): layer {layer} cannot be exported to ONNX: "
                f"its primitive {node.primitive!r} has no ONNX emitter and no decomposition"
            )
    try:
        return decompose(graph, OPS.__contains__)
    except UnsupportedError as exc:
        raise UnsupportedError(f"ml.export_onnx({owner}): {exc}") from None


def _check_keys(owner: str, what: str, given: Mapping[str, Any], expected: list[str]) -> None:
    missing = [k for k in expected if k not in given]
    unexpected = sorted(k for k in given if k not in expected)
    if missing or unexpected:
        hint = " (pass state=compiled.state, or compiled.initial_state())" if what == "state" and missing else ""
        raise KeyNotFoundError(
            f"ml.export_onnx({owner}): {what} must have the keys {expected}; missing {missing}, "
            f"unexpected {unexpected}{hint}"
        )


def _value_info(onnx: Any, edge: Edge, render: Renderer) -> Any:
    dims = [int(t) if t.isdigit() else t for t in render.items(edge.shape.items)]
    if any(isinstance(d, str) and d.startswith("...") for d in dims):
        raise UnsupportedError(f"ml.export_onnx: the rank of {edge.name!r} is not known; give its shape in shapes=")
    elem = onnx.TensorProto.INT64 if _kind(edge, len(dims)) == "int" else onnx.TensorProto.FLOAT
    return onnx.helper.make_tensor_value_info(edge.name, elem, dims)


def _kind(edge: Edge, rank: int) -> str:
    """An input's element kind; "any" (a cross-entropy target) is int when it is one rank below the logits."""
    if edge.kind != "any":
        return edge.kind
    for node, key in edge.consumers:
        if node.primitive == "cross_entropy" and key == "target":
            logits = Renderer().items(node.inputs["input"].shape.items)
            return "int" if rank == len(logits) - 1 else "float"
    return "float"


def _build(onnx: Any, graph: Graph, owner: str, opset: int, params: Mapping[str, Any], state: Mapping[str, Any]) -> Any:
    ctx = Context(opset, owner)
    render = Renderer()  # one renderer: a symbolic dimension has one name in every input and output
    arrays = {**params, **state}
    for edge in [*graph.params, *graph.state]:
        value = _host(arrays[edge.name], f"{edge.name!r}")
        value = value.astype(np.float32) if edge.kind != "int" else value.astype(np.int64)
        ctx.initializers.append(onnx.numpy_helper.from_array(value, edge.name))
    for node in graph.nodes:
        ins = {key: edge.name for key, edge in node.inputs.items()}
        (out,) = [e.name for k, e in node.outputs.items() if e.updates is None][:1] or [ctx.fresh("unused")]
        OPS[node.primitive](ctx, node, ins, out)
    inputs = [_value_info(onnx, e, render) for e in graph.inputs if not e.is_state]
    outputs = [_value_info(onnx, e, render) for e in graph.outputs if e.updates is None]
    body = onnx.helper.make_graph(ctx.nodes, owner, inputs, outputs, initializer=ctx.initializers)
    from .. import __version__  # noqa: PLC0415

    imports = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(body, opset_imports=imports, producer_name="mithril", producer_version=__version__)
    proto.ir_version = onnx.helper.find_min_ir_version_for(imports)
    return proto
