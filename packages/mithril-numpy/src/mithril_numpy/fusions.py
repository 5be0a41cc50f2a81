"""Rewrites of the joint (forward + backward) graph that NumPy runs faster: work both passes would do, done once.

They run on the joint graph's private copy just before code generation, so the core's graph,
the declarations and `op_table()` stay as they are; `OPS` holds the fused nodes' code.
"""

from __future__ import annotations

from mithril.graph import Edge, Graph, Node

__all__ = ["OPS", "fuse"]

OPS = {
    "cross_entropy_softmax": "_k.cross_entropy_softmax({input}, {target}, {ignore_index})",
    "cross_entropy_grad_softmax": "_k.cross_entropy_grad_softmax({softmax}, {target}, {gradient})",
}


def fuse(graph: Graph) -> Graph:
    """`graph` with every fusion below applied in place."""
    share_cross_entropy_softmax(graph)
    return graph


def _common_cross_entropy(node: Node) -> bool:
    """cross_entropy over [N, C] logits and class indices, mean reduction, no weight or smoothing, and an
    ignore_index outside [0, C): the case whose gradient is the `cross_entropy_grad` primitive."""
    x, t, a = node.inputs["input"], node.inputs["target"], node.attrs
    shape = x.concrete_shape()
    return (
        shape is not None
        and len(shape) == 2
        and t.concrete_shape() == shape[:1]
        and a["weight"] is None
        and a["reduction"] == "mean"
        and not a["label_smoothing"]
        and not 0 <= a["ignore_index"] < shape[1]
    )


def share_cross_entropy_softmax(graph: Graph) -> None:
    """A cross_entropy and the cross_entropy_grad of the same logits and targets share one softmax: the forward
    node also returns softmax(logits), which the gradient node reads instead of computing it again."""
    forward = {
        (n.inputs["input"], n.inputs["target"]): n
        for n in graph.nodes[: graph.forward_count]
        if n.primitive == "cross_entropy" and _common_cross_entropy(n)
    }
    for node in graph.nodes[graph.forward_count :]:
        if node.primitive != "cross_entropy_grad":
            continue
        logits, target = node.inputs["input"], node.inputs["target"]
        loss = forward.pop((logits, target), None)
        if loss is None:
            continue
        probs = Edge(f"{loss.path}.softmax", logits.shape, logits.kind, producer=loss, consumers=[(node, "softmax")])
        graph.edges.append(probs)
        loss.primitive, loss.outputs["softmax"] = "cross_entropy_softmax", probs
        logits.consumers.remove((node, "input"))
        node.primitive = "cross_entropy_grad_softmax"
        node.inputs = {"softmax": probs, "target": target, "gradient": node.inputs["gradient"]}
