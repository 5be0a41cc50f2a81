"""Graph-to-graph transformations: decomposing what a backend does not lower, and reverse mode.

Both work on copies, so the graph a program was lowered from is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import UnsupportedError
from ..graph import Edge, Graph, Node
from .builder import Applied, Builder
from .declaration import PRIMITIVES, get

__all__ = [
    "check_gradients",
    "copy_graph",
    "decompose",
    "for_backend",
    "joint_graph",
    "lowerable",
    "release",
    "settle",
]

Supports = Callable[[str], bool]


def copy_graph(graph: Graph) -> tuple[Graph, dict[Edge, Edge]]:
    """A graph with its own edges and nodes (shapes are shared); also the old -> new edge map."""
    edges = {e: e.unlinked_copy() for e in graph.edges}
    nodes = []
    for node in graph.nodes:
        copy = Node(node.op, node.path, {}, {}, node.primitive, dict(node.attrs))
        copy.inputs = inputs = {k: edges[e] for k, e in node.inputs.items()}
        copy.outputs = outputs = {k: edges[e] for k, e in node.outputs.items()}
        for key, edge in inputs.items():
            edge.consumers.append((copy, key))
        for edge in outputs.values():
            edge.producer = copy
        nodes.append(copy)
    new = Graph(graph.model, nodes, list(edges.values()), graph.forward_count, graph.index_checks)
    return new, edges


def _relink(graph: Graph) -> None:
    """Recompute every edge's producer and consumers from the nodes."""
    for edge in graph.edges:
        edge.producer, edge.consumers = None, []
    for node in graph.nodes:
        for key, edge in node.inputs.items():
            edge.consumers.append((node, key))
        for edge in node.outputs.values():
            edge.producer = node


def release(graph: Graph) -> None:
    """Unlink a graph that is done with (a joint graph once its code is generated): its edges and nodes refer
    to each other, so without this it would wait, with every edge and shape, for the cyclic collector."""
    for edge in graph.edges:
        edge.producer, edge.consumers = None, []
    graph.nodes = []


def settle(graph: Graph) -> None:
    """Run each node's `settle` (the choices its declaration leaves to compile time), in graph order."""
    for node in graph.nodes:
        decl = PRIMITIVES.get(node.primitive)
        if decl is not None and decl.settle is not None:
            decl.settle(node)


def lowerable(primitive: str, supports: Supports) -> bool:
    """Whether `primitive` can run on a backend: natively or through its decomposition."""
    if supports(primitive):
        return True
    decl = PRIMITIVES.get(primitive)
    return decl is not None and decl.decomposition is not None


def _expand(node: Node, keep: Supports, out: list[Node], made: list[Edge], subst: dict[Edge, Edge]) -> None:
    """Append `node` to `out`, or its decomposition (recursively), renaming edges through `subst`."""
    node.inputs = {k: subst.get(e, e) for k, e in node.inputs.items()}
    if keep(node.primitive):
        out.append(node)
        return
    decl = get(node.primitive)
    if decl.decomposition is None:
        raise UnsupportedError(f"primitive {node.primitive!r} (used by {node.path!r}) has no decomposition")
    inner: list[Node] = []
    builder = Builder(inner, made, node.path)
    applied = Applied(node.primitive, dict(node.inputs), dict(node.outputs), dict(node.attrs), node.path)
    results = decl.decomposition(builder, applied)
    fresh = {id(e) for e in made}
    for key, old in node.outputs.items():
        new = results[key]
        if id(new) not in fresh or new.role != "internal" or any(new is subst.get(o) for o in node.outputs.values()):
            new = builder.identity(new)
            fresh.add(id(new))
        new.name, new.role, new.user_named = old.name, old.role, old.user_named
        new.updates, new.grad_of, new.seed_of, new.is_state = old.updates, old.grad_of, old.seed_of, old.is_state
        subst[old] = new
    for child in inner:
        _expand(child, keep, out, made, subst)


def decompose(graph: Graph, keep: Supports, start: int = 0) -> Graph:
    """Replace every node from index `start` whose primitive `keep` rejects by its decomposition (in place)."""
    if all(keep(n.primitive) for n in graph.nodes[start:]):
        return graph
    out: list[Node] = list(graph.nodes[:start])
    made: list[Edge] = []
    subst: dict[Edge, Edge] = {}
    for node in graph.nodes[start:]:
        _expand(node, keep, out, made, subst)
    removed = set(subst)
    graph.edges = [e for e in graph.edges if e not in removed] + [e for e in made if e not in removed]
    if graph.forward_count >= 0 and start == 0:
        graph.forward_count = len(out)
    graph.nodes = out
    _relink(graph)
    return graph


def _needs_gradient(graph: Graph) -> set[Edge]:
    """Float edges that depend on a trainable parameter."""
    return _float_dependents({e for e in graph.params if e.kind == "float"}, graph.nodes)


def _float_dependents(needs: set[Edge], nodes: Sequence[Node]) -> set[Edge]:
    """`needs` grown, in node order, by every float output of a node that reads one of them."""
    for node in nodes:
        if not needs.isdisjoint(node.inputs.values()):
            needs.update(e for e in node.outputs.values() if e.kind == "float")
    return needs


def _keeps_rule(supports: Supports) -> Supports:
    """What joint_graph keeps before differentiating: a supported primitive with a rule, or one nothing decomposes."""
    return lambda p: supports(p) and (get(p).vjp is not None or get(p).decomposition is None)


def check_gradients(graph: Graph, supports: Supports) -> None:
    """Raise what `joint_graph(graph, <every output>, supports)` would for a primitive without a gradient rule,
    without building the backward pass: lets a backend that builds gradients on first use refuse at compile."""
    _check_rules(graph.nodes, _needs_gradient(graph), set(graph.outputs), _keeps_rule(supports))


def _check_rules(nodes: Sequence[Node], needs: set[Edge], reached: set[Edge], keep: Supports) -> None:
    """Walk `nodes` backward from the `reached` edges as joint_graph would; decompose (a copy of) what it would."""
    for node in reversed(nodes):
        decl = get(node.primitive)
        wanted = {k for k, e in node.inputs.items() if e in needs and decl.differentiable(k)}
        if not wanted or reached.isdisjoint(node.outputs.values()):
            continue
        reached.update(node.inputs[k] for k in wanted)
        if keep(node.primitive):
            if decl.vjp is None:
                raise UnsupportedError(f"primitive {node.primitive!r} (used by {node.path!r}) has no gradient rule")
            continue
        copies = {k: e.unlinked_copy() for k, e in node.inputs.items()}
        copy = Node(None, node.path, copies, dict(node.outputs), node.primitive, dict(node.attrs))
        inner: list[Node] = []
        subst: dict[Edge, Edge] = {}
        _expand(copy, keep, inner, [], subst)
        inner_needs = _float_dependents({copies[k] for k in wanted}, inner)
        _check_rules(inner, inner_needs, {subst[e] for e in node.outputs.values() if e in reached}, keep)


def joint_graph(graph: Graph, seeds: Sequence[str], supports: Supports) -> Graph:
    """Forward then backward pass as one graph of primitives `supports` accepts.

    `seeds` names the outputs that receive gradients; the result's `seeds` are new edges
    carrying them in (`seed_of`), its `gradients` one edge per parameter, in parameter
    order (`grad_of`), zeros where no seed reaches the parameter.
    """
    joint, _ = copy_graph(graph)
    decompose(joint, _keeps_rule(supports))
    joint.forward_count = len(joint.nodes)
    outputs = {e.name: e for e in joint.outputs}
    needs = _needs_gradient(joint)
    cotangents: dict[Edge, list[Edge]] = {}
    builder = Builder(joint.nodes, joint.edges, "grad")

    def total(edge: Edge) -> Edge | None:
        parts = cotangents.get(edge)
        if not parts:
            return None
        while len(parts) > 1:
            parts[:2] = [builder.add(parts[0], parts[1])]
        return parts[0]

    for name in seeds:
        out = outputs[name]
        seed = Edge(f"output_gradients[{name!r}]", out.shape, out.kind, role="seed", seed_of=name)
        joint.edges.append(seed)
        cotangents.setdefault(out, []).append(seed)
    for node in reversed(joint.nodes[: joint.forward_count]):
        decl = get(node.primitive)
        wanted = frozenset(k for k, e in node.inputs.items() if e in needs and decl.differentiable(k))
        g = {k: t for k, e in node.outputs.items() if (t := total(e)) is not None}
        if not wanted or not g:
            continue
        if decl.vjp is None:
            raise UnsupportedError(f"primitive {node.primitive!r} (used by {node.path!r}) has no gradient rule")
        builder.path = f"grad.{node.path}"
        applied = Applied(node.primitive, dict(node.inputs), dict(node.outputs), dict(node.attrs), node.path, g, wanted)
        for key, cotangent in decl.vjp(builder, applied).items():
            if cotangent is not None and key in wanted:
                cotangents.setdefault(node.inputs[key], []).append(cotangent)
    builder.path = "grad"
    for param in joint.params:
        grad = total(param)
        if grad is None:
            grad = builder.expand_like(builder.scalar(0.0), param)
        elif grad.role != "internal" or grad.grad_of is not None:
            grad = builder.identity(grad)
        grad.role, grad.grad_of = "gradient", param.name
    decompose(joint, supports, start=joint.forward_count)
    _drop_unused(joint)
    return joint


def _drop_unused(graph: Graph) -> None:
    """Remove nodes whose results reach no output or gradient (rules and decompositions may build more)."""
    live = {e for e in graph.edges if e.role in ("output", "gradient")}  # edges hash by identity
    kept: list[tuple[int, Node]] = []
    for index in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[index]
        if not live.isdisjoint(node.outputs.values()):
            kept.append((index, node))
            live.update(node.inputs.values())
    if len(kept) == len(graph.nodes):
        return
    kept.reverse()
    if graph.forward_count >= 0:
        graph.forward_count = sum(1 for index, _ in kept if index < graph.forward_count)
    graph.nodes = [node for _, node in kept]
    produced = {id(e) for n in graph.nodes for e in n.outputs.values()}
    graph.edges = [e for e in graph.edges if e.producer is None or id(e) in produced]
    _relink(graph)


def for_backend(graph: Graph, native: Supports, backend_name: str) -> Graph:
    """The graph with every primitive the backend does not lower natively decomposed; refuses what it cannot run."""
    missing = sorted({(n.primitive, n.path) for n in graph.nodes if not lowerable(n.primitive, native)})
    if missing:
        detail = ", ".join(f"{p!r} (used by {path!r})" for p, path in missing)
        raise UnsupportedError(
            f"{graph.model.describe()}: backend {backend_name!r} cannot run {detail}, natively or decomposed"
        )
    if all(native(n.primitive) for n in graph.nodes):
        return graph
    copy, _ = copy_graph(graph)
    decompose(copy, native)
    _drop_unused(copy)
    return copy
