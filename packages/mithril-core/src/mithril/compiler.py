"""`ml.compile`: flatten, complete shapes, lower through the backend; and the compiled model."""

from __future__ import annotations

import dataclasses
import gc
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .backend import Backend, CompileOptions, Program, parse_backend_options
from .errors import CompositionError, KeyNotFoundError, ShapeError, UnsupportedError
from .graph import Edge, Graph, flatten
from .models.base import BaseModel, Model, Operator
from .primitives.transform import for_backend, settle
from .shapes import Dim, Renderer, ShapeMismatch, Transaction, unify
from .validation import index_checks

__all__ = ["compile", "CompiledModel", "CompileRecipe"]

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
    compiler (None picks the backend's default); inference: forward only, no gradients;
    static_inference: inference, specialised to fixed shapes (those given here, else each new input
    shape is fixed at its first call; GGML builds one static graph per shape);
    outputs: keys to return (default: the canonical output); file_path: also write the
    generated source there; backend_options: the options the backend declares in its
    `compile_options_type`.
    """
    if not isinstance(model, BaseModel):
        raise TypeError(f"ml.compile: model must be a Mithril model, got {type(model).__name__}")
    if not isinstance(backend, Backend):
        raise TypeError(f"ml.compile: backend must be a Mithril backend instance, got {type(backend).__name__}")
    if not _has_layers(model):
        raise CompositionError(
            f"ml.compile: {model.describe()} has no layers, so there is nothing to compile; "
            "add layers with |= or += first"
        )
    options = compile_options(backend, jit, inference, static_inference, file_path, backend_options)
    with collector_paused():
        graph = flatten(model, copy=True, outputs=outputs, inference=options.inference)
        graph, program = lower_graph(graph, backend, options, shapes, trainable_keys)
    recipe = CompileRecipe(
        model,
        backend,
        {key: list(sizes) for key, sizes in (shapes or {}).items()},
        options.jit,
        options.inference,
        options.static_inference,
        None if outputs is None else list(outputs),
        [trainable_keys] if isinstance(trainable_keys, str) else list(trainable_keys),
        {f.name: getattr(options.backend, f.name) for f in dataclasses.fields(options.backend)},
    )
    return CompiledModel(graph, backend, program, options, recipe)


_pause_lock = threading.Lock()
_pause_depth = 0  # compilations running now, in any thread
_pause_resumes = False  # whether the collector was enabled when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a model is compiled; its previous state comes back after.

    Compiling allocates a few hundred objects per layer that stay alive (the graph, its shapes, the
    generated code); every collection they trigger meanwhile traverses the whole heap and frees nothing
    (half of a 1000-layer MLP's ml.compile). Nested and concurrent compilations share one pause: the last
    to finish re-enables the collector if it was enabled when the first began.
    """
    global _pause_depth, _pause_resumes
    with _pause_lock:
        if _pause_depth == 0:
            _pause_resumes = gc.isenabled()
            gc.disable()
        _pause_depth += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pause_depth -= 1
            if _pause_depth == 0 and _pause_resumes:
                gc.enable()


def compile_options(
    backend: Backend,
    jit: bool | None,
    inference: bool,
    static_inference: bool,
    file_path: str | None,
    backend_options: Mapping[str, Any],
) -> CompileOptions:
    """The checked options of one compilation (`jit=None`: the backend's default)."""
    options = CompileOptions(
        jit=backend.default_jit if jit is None else jit,
        inference=inference,
        static_inference=static_inference,
        file_path=file_path,
        backend=parse_backend_options(backend, backend_options),
    )
    if options.jit and not backend.supports_jit:
        raise UnsupportedError(f"ml.compile: backend {backend.name!r} has no JIT compiler; use jit=False")
    return options


def lower_graph(
    graph: Graph,
    backend: Backend,
    options: CompileOptions,
    shapes: Mapping[str, Sequence[int | None]] | None,
    trainable_keys: Sequence[str] = (),
) -> tuple[Graph, Program]:
    """Solve a flattened graph's shapes, add its index checks, decompose what the backend lacks and lower it."""
    _mark_trainable(graph, trainable_keys)
    _apply_shapes(graph, shapes or {})
    settle(graph)
    graph.index_checks = index_checks(graph)
    graph = for_backend(graph, backend.op_table().__contains__, backend.name)
    return graph, backend.lower(graph, options)


def _has_layers(model: BaseModel) -> bool:
    """Whether `model` holds at least one operator, at any depth (an empty model lowers to no code)."""
    if isinstance(model, Operator):
        return True
    return isinstance(model, Model) and any(_has_layers(child) for child in model.children)


@dataclass(frozen=True)
class CompileRecipe:
    """The arguments `ml.compile` was given (but file_path): a compiled model pickles as these and recompiles."""

    model: BaseModel
    backend: Backend
    shapes: dict[str, list[int | None]]
    jit: bool
    inference: bool
    static_inference: bool
    outputs: list[str] | None
    trainable_keys: list[str]
    backend_options: dict[str, Any]

    def compile(self) -> CompiledModel:
        """Compile the model again with the same backend options and arguments."""
        return compile(
            self.model,
            self.backend,
            self.shapes,
            jit=self.jit,
            inference=self.inference,
            static_inference=self.static_inference,
            outputs=self.outputs,
            trainable_keys=self.trainable_keys,
            **self.backend_options,
        )


def _rebuild(recipe: CompileRecipe, state: dict[str, Any] | None) -> CompiledModel:
    """Unpickle a compiled model: recompile its recipe and restore its state as backend arrays."""
    compiled = recipe.compile()
    if state is not None:
        compiled.state = {key: compiled.backend.array(value) for key, value in state.items()}
    return compiled


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

    def __init__(
        self,
        graph: Graph,
        backend: Backend,
        program: Program,
        options: CompileOptions,
        recipe: CompileRecipe | None,
    ) -> None:
        self.graph = graph
        self.backend = backend
        self.program = program
        self.options = options
        self.recipe = recipe
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and deep-copy) as the compile recipe plus the state as NumPy arrays; loading recompiles.

        The generated code holds framework handles (modules, ctypes pointers) that cannot be
        pickled, so the model is rebuilt from what it was compiled from instead.
        """
        if self.recipe is None:
            raise TypeError(
                f"{self!r} was built by ml.Trainer, not ml.compile, and cannot be pickled; "
                "save a checkpoint with trainer.save(state, path) instead"
            )
        state = None if self.state is None else {k: self.backend.to_numpy(v) for k, v in self.state.items()}
        return (_rebuild, (self.recipe, state))

    def __repr__(self) -> str:
        return f"<CompiledModel {self.graph.model.describe()} on {self.backend!r}>"
