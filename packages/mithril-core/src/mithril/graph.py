"""Flattening a logical model into a flat graph: one node per primitive, in topological order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import CompositionError, KeyNotFoundError
from .models.base import BaseModel, Connection, Init, Model, Operator
from .shapes import Shape, Transaction, copy_shapes, dim_values

__all__ = ["Edge", "Node", "Graph", "flatten"]


@dataclass(eq=False)
class Edge:
    """One value of the flat graph; `name` is its key in params, inputs or outputs."""

    name: str
    shape: Shape
    kind: str
    role: str = "internal"  # "input", "param", "internal", "output", "seed" or "gradient"
    user_named: bool = False
    producer: Node | None = None
    consumers: list[tuple[Node, str]] = field(default_factory=list)
    init: tuple[Node, str, Init] | None = None
    is_state: bool = False
    updates: str | None = None  # for a state-update output: the state key it replaces
    seed_of: str | None = None  # role "seed": the output whose gradient this edge carries in
    grad_of: str | None = None  # role "gradient": the parameter whose gradient this edge carries out

    def concrete_shape(self) -> tuple[int, ...] | None:
        """The shape as ints once every dimension is known (remembered from then on), else None."""
        known = self.__dict__.get("_concrete")
        if known is None:
            values = dim_values(self.shape.items)
            if values is None or None in values:
                return None
            known = self.__dict__["_concrete"] = values
        return known  # type: ignore[return-value]

    def remember_concrete_shape(self, values: tuple[int, ...]) -> None:
        """Record the shape as ints when whoever made the edge knows them, so concrete_shape need not resolve it."""
        self.__dict__["_concrete"] = values

    def unlinked_copy(self) -> Edge:
        """A copy with no producer or consumers (graph transformations relink their copies)."""
        copy = object.__new__(Edge)
        copy.__dict__.update(self.__dict__)
        copy.producer, copy.consumers = None, []
        return copy

    def __repr__(self) -> str:
        return f"Edge({self.name}, {self.role}, {self.shape})"


@dataclass(eq=False)
class Node:
    """One primitive application; `primitive` and `attrs` may differ from the op's in inference mode."""

    op: Operator | None  # None for nodes the core adds (decompositions, backward passes)
    path: str
    inputs: dict[str, Edge]
    outputs: dict[str, Edge]
    primitive: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Node({self.primitive} {self.path})"


@dataclass
class Graph:
    """Nodes in execution order and every edge; `inputs`, `params`, `outputs` keep key order."""

    model: BaseModel
    nodes: list[Node]
    edges: list[Edge]
    forward_count: int = -1  # in a joint graph: how many of `nodes` are the forward pass
    # integer inputs checked against their valid range before each call (set by ml.compile)
    index_checks: list[Any] = field(default_factory=list)

    @property
    def seeds(self) -> list[Edge]:
        return [e for e in self.edges if e.role == "seed"]

    @property
    def gradients(self) -> list[Edge]:
        return [e for e in self.edges if e.role == "gradient"]

    @property
    def inputs(self) -> list[Edge]:
        return [e for e in self.edges if e.role == "input"]

    @property
    def params(self) -> list[Edge]:
        return [e for e in self.edges if e.role == "param"]

    @property
    def outputs(self) -> list[Edge]:
        return [e for e in self.edges if e.role == "output"]

    @property
    def state(self) -> list[Edge]:
        return [e for e in self.edges if e.is_state]

    def edge(self, name: str) -> Edge:
        for e in self.edges:
            if e.name == name:
                return e
        raise KeyNotFoundError(f"{self.model.describe()} has no key {name!r}")


class _Flattener:
    def __init__(self, model: BaseModel, inference: bool) -> None:
        self.model = model
        self.inference = inference
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.pending_names: dict[Edge, str | None] = {}

    def new_edge(self, conn: Connection, name: str | None, user_named: bool) -> Edge:
        edge = Edge(name or "", conn.shape, conn.kind, user_named=user_named)
        self.edges.append(edge)
        self.pending_names[edge] = name
        return edge

    def visit(self, model: Model, env: dict[Connection, Edge], prefix: str) -> None:
        for conn in model.connections:
            if conn not in env:
                name = prefix + conn.name if conn.name is not None else None
                env[conn] = self.new_edge(conn, name, conn.name is not None and not prefix)
        for child in model.children:
            path = prefix + (child.local_name or "")
            keys = child.external_keys()
            if isinstance(child, Operator):
                ins = {k: env[child.links[k]] for k in child.input_specs}
                outs = {k: env[child.links[k]] for k in child.output_kinds}
                self.add_node(child, path, ins, outs)
            elif isinstance(child, Model):
                inner = {keys[k]: env[link] for k, link in child.links.items()}
                self.visit(child, inner, path + ".")

    def add_node(self, op: Operator, path: str, ins: dict[str, Edge], outs: dict[str, Edge]) -> None:
        primitive = op.primitive
        if self.inference and op.inference is not None:
            primitive, kept = op.inference
            ins = {k: e for k, e in ins.items() if k in kept}
            outs = {k: e for k, e in outs.items() if k == op.canonical_output}
        node = Node(op, path, ins, outs, primitive, dict(op.attrs))
        for key, edge in ins.items():
            edge.consumers.append((node, key))
            spec = op.input_specs[key]
            if spec.role in ("param", "state") and edge.init is None and spec.init is not None:
                edge.init = (node, key, spec.init)
            edge.is_state = edge.is_state or spec.role == "state"
        for edge in outs.values():
            edge.producer = node
        self.nodes.append(node)

    def finish(self, outputs: Iterable[str]) -> Graph:
        taken: set[str] = set()
        for edge, name in self.pending_names.items():
            if name is None:
                if edge.producer is not None:
                    key = next(k for k, e in edge.producer.outputs.items() if e is edge)
                    name = f"{edge.producer.path}.{key}"
                elif edge.consumers:
                    node, key = edge.consumers[0]
                    name = f"{node.path}.{key}"
                else:
                    name = "unused"
            base, n = name, 1
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            taken.add(name)
            edge.name = name
        self.edges = [e for e in self.edges if e.producer is not None or e.consumers]
        for edge in self.edges:
            if edge.producer is None:
                is_param = any(_op(n).input_specs[k].role == "param" for n, k in edge.consumers)
                edge.role = "param" if is_param and not edge.is_state else "input"
        by_name = {e.name: e for e in self.edges}
        for node in self.nodes:
            for key, edge in node.outputs.items():
                if key in _op(node).state_updates:
                    edge.role = "output"
                    edge.updates = node.inputs[_op(node).state_updates[key]].name
        for name in outputs:
            found = by_name.get(name)
            if found is None or found.producer is None:
                produced = sorted(e.name for e in self.edges if e.producer is not None and e.user_named)
                raise KeyNotFoundError(
                    f"{self.model.describe()}: output {name!r} is not produced by the model; "
                    f"choose from 'output' or the named keys {produced}"
                )
            found.role = "output"
        nodes = _prune(_topological(self.model, self.nodes))
        live = {id(e) for n in nodes for e in [*n.inputs.values(), *n.outputs.values()]}
        self.edges = [e for e in self.edges if id(e) in live]
        first_use: dict[int, int] = {}
        for index, node in enumerate(nodes):
            for edge in [*node.inputs.values(), *node.outputs.values()]:
                first_use.setdefault(id(edge), index)
        edges = sorted(self.edges, key=lambda e: first_use.get(id(e), len(nodes)))
        return Graph(self.model, nodes, edges)


def _op(node: Node) -> Operator:
    """The operator of a node made by flattening (nodes the core adds later have none)."""
    assert node.op is not None, node
    return node.op


def _topological(model: BaseModel, nodes: list[Node]) -> list[Node]:
    waiting = {id(n): sum(1 for e in n.inputs.values() if e.producer is not None) for n in nodes}
    ready = [n for n in reversed(nodes) if waiting[id(n)] == 0]
    order: list[Node] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for edge in node.outputs.values():
            for consumer, _ in edge.consumers:
                waiting[id(consumer)] -= 1
                if waiting[id(consumer)] == 0:
                    ready.append(consumer)
    if len(order) != len(nodes):
        raise CompositionError(f"{model.describe()} contains a cycle")
    return order


def _prune(nodes: list[Node]) -> list[Node]:
    """Drop nodes that no output (or state update) depends on."""
    needed: set[int] = set()
    kept: list[Node] = []
    for node in reversed(nodes):
        if any(e.role == "output" or id(e) in needed for e in node.outputs.values()):
            kept.append(node)
            needed.update(id(e) for e in node.inputs.values())
    kept.reverse()
    return kept


def flatten(
    model: BaseModel, *, copy: bool = True, outputs: Iterable[str] | None = None, inference: bool = False
) -> Graph:
    """Flatten `model`; with copy=True the graph gets its own shapes, so solving more leaves the model unchanged.

    inference=True swaps ops for their inference form (batch statistics -> running
    statistics, dropout -> identity) and drops state updates.
    """
    flattener = _Flattener(model, inference)
    if isinstance(model, Operator):
        keys = model.external_keys()
        ins = {k: flattener.new_edge(keys[k], k, True) for k in model.input_specs}
        outs = {k: flattener.new_edge(keys[k], k, True) for k in model.output_kinds}
        flattener.add_node(model, model.local_name or type(model).__name__.lower(), ins, outs)
        default_out = model.canonical_output
    elif isinstance(model, Model):
        env: dict[Connection, Edge] = {}
        if model.cin is not None and model.cin.name is None:
            env[model.cin] = flattener.new_edge(model.cin, "input", True)
        if model.cout is not None and model.cout.name is None:
            env[model.cout] = flattener.new_edge(model.cout, "output", True)
        flattener.visit(model, env, "")
        default_out = None
        if model.cout is not None:
            default_out = env[model.cout].name
    else:
        raise TypeError(f"expected a Mithril model, got {model!r}")
    requested = list(outputs) if outputs is not None else ([default_out] if default_out else [])
    graph = flattener.finish(requested)
    if copy:
        _copy_shapes(graph)
    return graph


def _copy_shapes(graph: Graph) -> None:
    copies = copy_shapes([e.shape for e in graph.edges])
    for edge, shape in zip(graph.edges, copies):
        edge.shape = shape
    with Transaction() as tx:
        for node in graph.nodes:
            if node.op is not None and node.op.rule is not None:
                shapes = {k: e.shape for k, e in {**node.inputs, **node.outputs}.items()}
                node.op.attach_rule(shapes)
        tx.propagate()
