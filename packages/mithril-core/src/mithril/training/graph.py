"""The training graph: a model's flat graph with its losses attached to its outputs, keys unchanged.

The model is flattened exactly as `ml.compile` flattens it, so its parameter, state and input keys
are the ones `ml.compile(model, backend).randomize_params()` has (no wrapper prefix). Each loss is
flattened on its own and joined to the graph at the output it reads: its canonical input becomes
that output, its other inputs become batch keys ("target" for a single loss, "<output>.target" for
a loss per output) and its canonical output the loss key ("loss", or "<output>.loss").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CompositionError, DTypeMismatchError, KeyNotFoundError, ShapeError
from ..graph import Edge, Graph, flatten
from ..models.base import BaseModel
from ..shapes import Renderer, ShapeMismatch, Transaction, unify

__all__ = ["LossSpec", "training_graph"]


@dataclass(frozen=True)
class LossSpec:
    """One loss of a training graph: the model output it reads, its loss key and the batch keys it adds."""

    output: str
    loss_key: str
    weight: float
    batch_keys: dict[str, str]  # the loss model's input key -> the batch key it reads


def training_graph(
    model: BaseModel,
    losses: Mapping[str, BaseModel] | None,
    weights: Mapping[str, float],
    *,
    single: bool,
    inference: bool,
    model_outputs: bool = True,
) -> tuple[Graph, list[LossSpec]]:
    """`model`'s flat graph with each loss of `losses` ({output key: loss model}) attached.

    `losses=None`: the model's canonical output is already the loss. `single`: one loss given
    bare (keys "loss" and "target") rather than in a dict (keys "<output>.loss", "<output>.target").
    `model_outputs=False`: the model outputs the losses read stay internal, so the graph outputs
    only the losses and state updates (a step seeds every output: no subset of gradients to build).
    """
    if losses is None:
        graph = flatten(model, copy=True, inference=inference)
        if not graph.outputs:
            raise CompositionError(f"ml.Trainer: {model.describe()} has no output to use as the loss")
        output = graph.outputs[0].name
        return graph, [LossSpec(output, output, 1.0, {})]
    graph = flatten(model, copy=True, outputs=list(losses), inference=inference)
    specs = []
    for output, loss in losses.items():
        loss_key = "loss" if single else f"{output}.loss"
        spec = _attach(graph, output, copy.deepcopy(loss), loss_key, weights.get(output, 1.0), single, inference)
        specs.append(spec)
    if not model_outputs:
        for spec in specs:
            graph.edge(spec.output).role = "internal"
    return graph, specs


def _attach(
    graph: Graph, output: str, loss: BaseModel, loss_key: str, weight: float, single: bool, inference: bool
) -> LossSpec:
    """Join `loss` to `graph` at `output` (in place) and describe the keys it adds."""
    owner = graph.model.describe()
    loss_graph = flatten(loss, copy=True, inference=inference)
    reads = loss.canonical_input
    if reads is None or not any(e.name == reads for e in loss_graph.inputs):
        raise CompositionError(
            f"ml.Trainer: the loss {loss.describe()} has no canonical input to connect {output!r} to"
        )
    if not loss_graph.outputs:
        raise CompositionError(f"ml.Trainer: the loss {loss.describe()} has no output")
    target = graph.edge(output)
    joined = loss_graph.edge(reads)
    if "any" not in (target.kind, joined.kind) and target.kind != joined.kind:
        raise DTypeMismatchError(
            f"ml.Trainer: {owner} output {output!r} carries {target.kind} values, but {loss.describe()} "
            f"key {reads!r} expects {joined.kind} values"
        )
    _unify(target, joined, f"{owner} output {output!r}", f"{loss.describe()} key {reads!r}")
    taken = {e.name for e in graph.edges}
    loss_out = loss_graph.outputs[0]
    batch_keys: dict[str, str] = {}
    renamed: dict[int, str] = {id(loss_out): loss_key}
    for edge in loss_graph.inputs:
        if edge is not joined:
            renamed[id(edge)] = batch_keys[edge.name] = edge.name if single else f"{output}.{edge.name}"
    prefix = loss_key.removesuffix("loss") + "loss."
    for edge in loss_graph.edges:
        if edge is joined:
            continue
        name = renamed.get(id(edge), prefix + edge.name)
        if name in taken:
            raise KeyNotFoundError(
                f"ml.Trainer: {owner} already has a key {name!r}, which the loss {loss.describe()} "
                f"needs for its {'target' if name in batch_keys.values() else 'output'}; rename the model's key"
            )
        edge.name = name
        edge.user_named = edge.user_named or id(edge) in renamed
        taken.add(name)
        graph.edges.append(edge)
    for node in loss_graph.nodes:
        node.path = prefix + node.path
        for key, edge in node.inputs.items():
            if edge is joined:
                node.inputs[key] = target
                target.consumers.append((node, key))
        graph.nodes.append(node)
    return LossSpec(output, loss_key, float(weight), batch_keys)


def _unify(target: Edge, joined: Edge, produced: str, expects: str) -> None:
    """Give the loss input the model output's shape, or raise ShapeError naming both."""
    render = Renderer()
    given, expected = render(target.shape.items), render(joined.shape.items)
    try:
        with Transaction() as tx:
            unify(target.shape.items, joined.shape.items)
            tx.propagate()
    except (ShapeMismatch, ShapeError) as exc:
        raise ShapeError(
            f"ml.Trainer: {expects} expects {expected}, but {produced} has shape {given} ({exc})"
        ) from None
