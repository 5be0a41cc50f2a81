"""Building graph fragments out of primitives: what gradient rules and decompositions write with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ShapeError
from ..graph import Edge, Node
from ..shapes import Constraint, Dim, Renderer, Shape, ShapeMismatch, Transaction, dim_values, instantiate, unify
from .declaration import Primitive, get

__all__ = ["Builder", "Applied"]


@dataclass
class Applied:
    """One application of a primitive, as a rule sees it.

    `inputs` and `outputs` are the node's edges by key, `attrs` its attributes; for a
    gradient rule `g` holds the cotangent of each output that has one, and `wanted` the
    input keys whose cotangents are needed.
    """

    primitive: str
    inputs: dict[str, Edge]
    outputs: dict[str, Edge]
    attrs: dict[str, Any]
    path: str
    g: dict[str, Edge] = field(default_factory=dict)
    wanted: frozenset[str] = frozenset()

    @property
    def output(self) -> Edge:
        return next(iter(self.outputs.values()))

    def __getitem__(self, key: str) -> Edge:
        return self.inputs[key]

    def has(self, key: str) -> bool:
        return key in self.inputs


# Output shapes of primitive applications whose input shapes are all concrete, by
# (primitive, attributes, input shapes): backward passes repeat the same few applications.
_CONCRETE: dict[tuple[Any, ...], dict[str, tuple[int, ...]]] = {}


def _cache_key(primitive: str, attrs: Mapping[str, Any], inputs: Mapping[str, Edge]) -> tuple[Any, ...] | None:
    """A hashable key when every input shape is concrete, else None."""
    dims = []
    for name, edge in inputs.items():
        values = edge.concrete_shape()
        if values is None:
            return None
        dims.append((name, values))
    found = (primitive, tuple(attrs.items()), tuple(dims))
    try:
        hash(found)
    except TypeError:
        return None
    return found


def _watch(rule: Callable[..., bool], shapes: dict[str, Shape], attrs: Mapping[str, Any], path: str) -> None:
    """Keep a shape rule that could not finish yet (symbolic sizes) re-running as sizes become known."""
    constraint = Constraint(lambda: rule(shapes, attrs), path)
    constraint.watch(shapes.values())
    constraint.schedule()


class Builder:
    """Appends primitive nodes (with solved shapes) to a node and edge list.

    `b.emit("mul", {"left": x, "right": y})` returns the outputs by key;
    `b.mul(x, y)` is the same, taking inputs in declaration order and attributes by
    keyword, and returns the single (or first) output.
    """

    def __init__(self, nodes: list[Node], edges: list[Edge], path: str) -> None:
        self.nodes = nodes
        self.edges = edges
        self.path = path
        self._count = 0

    def emit(
        self, primitive: str, inputs: Mapping[str, Edge], attrs: Mapping[str, Any] | None = None
    ) -> dict[str, Edge]:
        """Add one node of `primitive`; returns its output edges by key."""
        decl = get(primitive)
        attrs = {**decl.attrs, **(attrs or {})}
        path = f"{self.path}.{primitive}_{self._count}"
        self._count += 1
        cache = _cache_key(primitive, attrs, inputs)
        known = _CONCRETE.get(cache) if cache is not None else None
        if known is not None:
            shapes = {out: Shape([Dim(d) for d in dims]) for out, dims in known.items()}
        else:
            shapes = self._solve(decl, attrs, inputs, path)
            if cache is not None:
                solved = {out: dim_values(shapes[out].items) for out in decl.outputs}
                if all(dims is not None and None not in dims for dims in solved.values()):
                    _CONCRETE[cache] = solved  # type: ignore[assignment]
        outputs = {key: Edge(f"{path}.{key}", shapes[key], kind) for key, kind in decl.outputs.items()}
        if known is not None:
            for key, edge in outputs.items():
                edge.remember_concrete_shape(known[key])
        node = Node(None, path, dict(inputs), outputs, primitive, attrs)
        for key, edge in inputs.items():
            edge.consumers.append((node, key))
        for edge in outputs.values():
            edge.producer = node
        self.nodes.append(node)
        self.edges.extend(outputs.values())
        return outputs

    @staticmethod
    def _solve(decl: Primitive, attrs: dict[str, Any], inputs: Mapping[str, Edge], path: str) -> dict[str, Shape]:
        """The node's shapes, unified with its inputs' and completed by the shape rule."""
        template = decl.shape_template(attrs)
        shapes = instantiate(template, {}, [*inputs, *decl.outputs])
        with Transaction() as tx:
            try:
                for key, edge in inputs.items():
                    unify(shapes[key].items, edge.shape.items)
                if decl.rule is not None and not decl.rule(shapes, attrs):
                    _watch(decl.rule, shapes, attrs, path)
                tx.propagate()
            except (ShapeMismatch, ShapeError) as exc:
                render = Renderer()
                given = ", ".join(f"{k}={render(e.shape.items)}" for k, e in inputs.items())
                raise ShapeError(f"{path}: cannot apply {decl.name!r} to {given}: {exc}") from None
        return shapes

    def scalar(self, value: float) -> Edge:
        """A 0-d constant in the backend's float dtype."""
        return self.emit("scalar", {}, {"value": float(value)})["output"]

    def __getattr__(self, primitive: str) -> Callable[..., Edge]:
        if primitive.startswith("_"):
            raise AttributeError(primitive)
        names = get(primitive).input_names

        def apply(builder: Builder, *args: Edge, **attrs: Any) -> Edge:
            inputs = {k: v for k, v in zip(names, args) if v is not None}
            for key in [k for k in attrs if k in names]:
                inputs[key] = attrs.pop(key)
            return next(iter(builder.emit(primitive, inputs, attrs).values()))

        # a method from now on, so later uses skip this lookup (on the class: kept on the instance, it
        # would close a reference cycle that holds the builder's whole graph until the collector runs)
        setattr(Builder, primitive, apply)
        return getattr(self, primitive)
