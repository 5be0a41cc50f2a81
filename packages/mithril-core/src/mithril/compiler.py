"""`ml.compile`: flatten, complete shapes, lower through the backend; and the compiled model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .backend import Backend, CompileOptions, Program
from .errors import KeyNotFoundError, ShapeError, UnsupportedError
from .graph import Edge, Graph, flatten
from .models.base import BaseModel
from .shapes import Dim, Renderer, ShapeMismatch, Transaction, unify

__all__ = ["compile", "CompiledModel"]

_EMPTY: Mapping[str, Any] = {}


def compile(  # noqa: A001 - the public name the quick start uses
    model: BaseModel,
    backend: Backend,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
    *,
    jit: bool | None = None,
    inference: bool = False,
    static_inference: bool = False,
    outputs: Sequence[str] | None = None,
    trainable_keys: Sequence[str] = (),
    file_path: str | None = None,
    **backend_options: Any,
) -> CompiledModel:
    """Compile a logical model for a backend.

    shapes: sizes for any keys (None leaves a dimension symbolic); jit: the backend's
    compiler (None picks the backend's default); inference / static_inference: forward
    only, no gradients; outputs: keys to return (default: the canonical output);
    file_path: also write the generated source there.
    """
    if not isinstance(model, BaseModel):
        raise TypeError(f"ml.compile: model must be a Mithril model, got {type(model).__name__}")
    if not isinstance(backend, Backend):
        raise TypeError(f"ml.compile: backend must be a Mithril backend instance, got {type(backend).__name__}")
    if jit is None:
        jit = backend.default_jit
    if jit and not backend.supports_jit:
        raise UnsupportedError(f"ml.compile: backend {backend.name!r} has no JIT compiler; use jit=False")
    inference = bool(inference or static_inference)
    graph = flatten(model, copy=True, outputs=outputs, inference=inference)
    _mark_trainable(graph, trainable_keys)
    _apply_shapes(graph, shapes or {})
    options = CompileOptions(
        jit=bool(jit),
        inference=inference,
        file_path=file_path,
        extra={**backend_options, **({"static_inference": True} if static_inference else {})},
    )
    program = backend.lower(graph, options)
    return CompiledModel(graph, backend, program, options)


def _mark_trainable(graph: Graph, keys: Sequence[str]) -> None:
    inputs = {e.name: e for e in graph.inputs}
    for key in [keys] if isinstance(keys, str) else keys:
        if key not in inputs:
            raise KeyNotFoundError(
                f"ml.compile({graph.model.describe()}): trainable_keys names {key!r}, which is not an input; "
                f"inputs are {sorted(inputs)}"
            )
        inputs[key].role = "param"


def _apply_shapes(graph: Graph, shapes: Mapping[str, Sequence[int | None]]) -> None:
    if not isinstance(shapes, Mapping):
        raise TypeError(f"ml.compile: shapes must be a dict of key -> list of sizes, got {type(shapes).__name__}")
    by_name = {e.name: e for e in graph.edges if e.role != "internal" or e.user_named}
    owner = graph.model.describe()
    with Transaction() as tx:
        for key, sizes in shapes.items():
            if key not in by_name:
                raise KeyNotFoundError(
                    f"ml.compile({owner}): unknown key {key!r} in shapes; keys are {sorted(by_name)}"
                )
            if (
                isinstance(sizes, (str, bytes))
                or not isinstance(sizes, Sequence)
                or not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0) for s in sizes)
            ):
                raise TypeError(f"ml.compile({owner}): shapes[{key!r}] must be a list of ints or None, got {sizes!r}")
            edge = by_name[key]
            expected = Renderer()(edge.shape.items)
            try:
                unify(edge.shape.items, [Dim(s) for s in sizes])
                tx.propagate()
            except ShapeMismatch as exc:
                raise ShapeError(
                    f"ml.compile({owner}): shapes[{key!r}] = {list(sizes)} does not fit key {key!r} of shape "
                    f"{expected} ({exc})"
                ) from None
        tx.propagate()


class CompiledModel:
    """A model compiled for one backend: parameters in, outputs (and gradients) out."""

    def __init__(self, graph: Graph, backend: Backend, program: Program, options: CompileOptions) -> None:
        self.graph = graph
        self.backend = backend
        self.program = program
        self.options = options
        self._forward = program.forward
        self._forward_backward = program.forward_backward if not options.inference else self._no_gradients
        self._state_updates = {e.name: e.updates for e in graph.outputs if e.updates is not None}
        self._state_key_set = frozenset(e.name for e in graph.state)
        self.state: dict[str, Any] | None = None
        if graph.state:
            self.evaluate = self._evaluate_stateful  # type: ignore[method-assign]

    # -- description ---------------------------------------------------------------
    @property
    def code(self) -> str:
        """The generated source of this model's functions."""
        return self.program.source

    @property
    def input_keys(self) -> list[str]:
        return [e.name for e in self.graph.inputs if not e.is_state]

    @property
    def state_keys(self) -> list[str]:
        """Keys of the model's state (e.g. BatchNorm running statistics)."""
        return [e.name for e in self.graph.state]

    @property
    def param_keys(self) -> list[str]:
        return [e.name for e in self.graph.params]

    @property
    def output_keys(self) -> list[str]:
        return [e.name for e in self.graph.outputs if e.updates is None]

    @property
    def shapes(self) -> dict[str, tuple[int | str, ...]]:
        """Shapes of inputs, parameters and outputs; symbolic dimensions are named d0, d1, ..."""
        render = Renderer()
        return {
            e.name: tuple(int(t) if t.isdigit() else t for t in render.items(e.shape.items))
            for e in self.graph.edges
            if e.role != "internal"
        }

    def summary(self) -> str:
        """A table of every parameter with its shape and size, then inputs and outputs."""
        render = Renderer()
        rows = [f"{self.graph.model.describe()} on {self.backend!r}"]
        total = 0
        for role in ("param", "input", "state", "output"):
            for e in self.graph.edges:
                label = "state" if e.is_state else e.role
                if label != role or e.updates is not None:
                    continue
                dims = render.items(e.shape.items)
                size = math.prod(int(d) for d in dims) if all(d.isdigit() for d in dims) else None
                if role == "param" and size is not None:
                    total += size
                rows.append(f"  {role:<6} {e.name:<36} [{', '.join(dims)}]" + (f"  {size:,}" if size else ""))
        rows.append(f"  total trainable values: {total:,}")
        return "\n".join(rows)

    # -- parameters ------------------------------------------------------------------
    def randomize_params(self, seed: int | None = None) -> dict[str, Any]:
        """Parameters with PyTorch's default initialisation, drawn from the backend's RNG."""
        if seed is not None:
            self.backend.set_seed(seed)
        return {e.name: self._init(e) for e in self.graph.params}

    def _init(self, edge: Edge) -> Any:
        shape = self._concrete(edge)
        backend = self.backend
        if edge.init is None:
            return backend.rand(*shape) * 2.0 - 1.0
        node, _, init = edge.init
        if init.kind == "ones":
            return backend.ones(*shape)
        if init.kind == "zeros":
            return backend.zeros(*shape)
        if init.kind == "normal":
            return backend.randn(*shape)
        if init.kind == "fan_in_uniform":
            source = node.inputs[init.of] if init.of else edge
            fan_shape = self._concrete(source)
            fan_in = math.prod(fan_shape[1:]) if len(fan_shape) > 1 else fan_shape[0]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            return (backend.rand(*shape) * 2.0 - 1.0) * bound
        raise UnsupportedError(f"unknown initialisation {init.kind!r} for parameter {edge.name!r}")

    def initial_state(self) -> dict[str, Any]:
        """Fresh state: running means 0 and variances 1, like a new torch module."""
        return {e.name: self._init(e) for e in self.graph.state}

    def _concrete(self, edge: Edge) -> tuple[int, ...]:
        dims = Renderer().items(edge.shape.items)
        if not all(d.isdigit() for d in dims):
            raise ShapeError(
                f"{self.graph.model.describe()}: cannot create parameter {edge.name!r}: its shape "
                f"[{', '.join(dims)}] is not fully known; give the input sizes to ml.compile(shapes=...)"
            )
        return tuple(int(d) for d in dims)

    # -- evaluation ------------------------------------------------------------------
    def evaluate(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any] | None = None,
        output_gradients: Mapping[str, Any] | None = None,
    ) -> Any:
        """Outputs for `params` and `inputs`; with `output_gradients`, also parameter gradients.

        Returns {"output": ...}, or (outputs, gradients) keyed like `params` when
        output_gradients are given.
        """
        if output_gradients is None:
            return self._forward(params, _EMPTY if inputs is None else inputs)
        return self._forward_backward(params, _EMPTY if inputs is None else inputs, output_gradients)

    def _no_gradients(self, *args: Any) -> Any:
        """forward_backward of a model compiled for inference only."""
        raise UnsupportedError(
            f"{self.graph.model.describe()} was compiled for inference only; compile without "
            "inference=True/static_inference=True to get gradients"
        )

    def _evaluate_stateful(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any] | None = None,
        output_gradients: Mapping[str, Any] | None = None,
    ) -> Any:
        """`evaluate` for models with state: reads `self.state` and stores the updated state."""
        if self.state is None:
            self.state = self.initial_state()
        result = self.apply(params, inputs, self.state, output_gradients)
        self.state = {**self.state, **result[-1]}
        return result[0] if output_gradients is None else result[:2]

    def apply(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any] | None,
        state: Mapping[str, Any],
        output_gradients: Mapping[str, Any] | None = None,
    ) -> Any:
        """Functional evaluation: state in, new state out.

        Returns (outputs, new_state), or (outputs, gradients, new_state) with
        output_gradients. The compiled model's own `state` is not touched.
        """
        if not isinstance(state, Mapping) or state.keys() != self._state_key_set:
            given = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: state must have exactly the keys {self.state_keys}, got {given}"
            )
        merged = {**(inputs or _EMPTY), **state}
        if output_gradients is None:
            outputs = self._forward(params, merged)
            grads = None
        else:
            outputs, grads = self._forward_backward(params, merged, output_gradients)
        new_state = {self._state_updates[k]: outputs.pop(k) for k in list(outputs) if k in self._state_updates}
        return (outputs, new_state) if grads is None else (outputs, grads, new_state)

    def __repr__(self) -> str:
        return f"<CompiledModel {self.graph.model.describe()} on {self.backend!r}>"
