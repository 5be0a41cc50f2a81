"""The tracer backend: lowers only the core set, and records every primitive it executes.

Its op table is exactly `mithril.primitives.CORE_SET` (NumPy implementations of those
primitives): the core decomposes every composite before lowering, and builds the backward
pass as a graph of core primitives (`mithril.primitives.joint_graph`), so the tracer runs
every layer, forward and backward, without lowering any composite itself.

Each `evaluate` call of a compiled model starts a new `Trace`; every primitive the generated
code executes appends an `OpRecord` with its input and output shapes, in phase "forward" or
"backward". `backend.trace` is the last call's trace, `backend.history` the most recent ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions, OpImpl, Program
from mithril.codegen import GradientSubsets, PythonCodegen, forward_function, joint_functions
from mithril.dtypes import DType
from mithril.graph import Edge, Graph, Node
from mithril.host_arrays import HostArrays
from mithril.primitives import CORE_SET, joint_graph
from mithril.validation import make_diagnose
from mithril_numpy import ops as numpy_ops

__all__ = ["TracerBackend", "OpRecord", "Trace", "OPS"]

# The core set, implemented with NumPy's op implementations: nothing more.
OPS: dict[str, OpImpl] = {name: numpy_ops.OPS[name] for name in sorted(CORE_SET)}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpRecord:
    """One executed primitive: which node ran, in which pass, on which shapes."""

    primitive: str
    path: str
    phase: str  # "forward", or "backward" for the nodes of the backward pass
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]


@dataclass
class Trace:
    """The primitives one `evaluate` call executed, in order."""

    kind: str  # "forward" or "forward_backward"
    ops: list[OpRecord] = field(default_factory=list)

    @property
    def primitives(self) -> list[str]:
        """The forward primitives, in execution order."""
        return [op.primitive for op in self.ops if op.phase == "forward"]

    def __str__(self) -> str:
        rows = [f"{self.kind}: {len(self.ops)} primitive calls"]
        for op in self.ops:
            ins = ", ".join(map(str, op.input_shapes))
            outs = ", ".join(map(str, op.output_shapes))
            rows.append(f"  {op.phase:<8} {op.primitive:<16} {op.path:<28} {ins} -> {outs}")
        return "\n".join(rows)


class TracingCodegen(PythonCodegen):
    """PythonCodegen whose every op expression is wrapped in a call to `_record`.

    In a joint graph the nodes from `graph.forward_count` on are the backward pass.
    """

    def __init__(self, graph: Graph, backend: Backend, ops: Mapping[str, OpImpl], namespace: Mapping[str, Any]) -> None:
        super().__init__(graph, backend, ops, namespace)
        first_backward = len(graph.nodes) if graph.forward_count < 0 else graph.forward_count
        self.phases = {id(n): "backward" if i >= first_backward else "forward" for i, n in enumerate(graph.nodes)}

    def expr(self, node: Node, impl: OpImpl, args: Mapping[str, str]) -> str:
        inner = super().expr(node, impl, args)
        inputs = "".join(f"{args[key]}, " for key in node.inputs)
        return f"_record({node.primitive!r}, {node.path!r}, {self.phases[id(node)]!r}, ({inputs}), {inner})"


class TracerProgram(Program):
    """Generated forward and forward_backward functions; each call opens a new trace on the backend."""

    def __init__(self, backend: TracerBackend, graph: Graph, options: CompileOptions) -> None:
        self.backend = backend
        self.graph = graph
        self.table = backend.op_table()
        self.namespace = {
            **numpy_ops.NAMESPACE,
            "_backend": backend,
            "_record": backend.record,
            "_partial": GradientSubsets(graph, self._subset_function),
        }
        gen = TracingCodegen(graph, backend, self.table, self.namespace)
        self.diagnose = make_diagnose(graph, backend)
        self.source = forward_function(gen, gen.constant(self.diagnose, "diagnose"))
        if not options.inference:
            joint = self._joint_codegen(graph.outputs)
            self.source += "\n\n" + joint_functions(joint, joint.constant(self.diagnose, "diagnose"), "_partial")
            gen.namespace.update(joint.namespace)
        functions = gen.build(self.source, options.file_path)
        self._forward = functions["forward"]
        self._forward_backward: Any = functions.get("forward_backward")  # absent when compiled for inference

    def forward(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.backend.begin("forward")
        result: dict[str, Any] = self._forward(params, inputs)
        return result

    def forward_backward(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self.backend.begin("forward_backward")
        result: tuple[dict[str, Any], dict[str, Any]] = self._forward_backward(params, inputs, output_gradients)
        return result

    def _joint_codegen(self, seeds: list[Edge]) -> TracingCodegen:
        """Code generator for the core's forward-and-backward graph seeded at `seeds`, in core primitives."""
        joint = joint_graph(self.graph, [e.name for e in seeds], self.table.__contains__)
        return TracingCodegen(joint, self.backend, self.table, self.namespace)

    def _subset_function(self, edges: list[Edge]) -> Any:
        """forward_backward seeded by the gradients of `edges` only (the core caches one per subset)."""
        gen = self._joint_codegen(edges)
        return gen.build(joint_functions(gen, gen.constant(self.diagnose, "diagnose"), None))["forward_backward"]


class TracerBackend(HostArrays, Backend):
    """NumPy on the CPU (float32, float64), lowering only the core set, with an op-level trace of every call.

    history: how many traces `backend.history` keeps (the oldest are dropped).
    """

    name = "tracer"
    supported_dtypes = (ml.float32, ml.float64)
    supports_gradients = True
    supports_jit = False
    ops = OPS

    def __init__(self, dtype: DType | str = ml.float32, device: str = "cpu", history: int = 16) -> None:
        if device != "cpu":
            raise ValueError(f"TracerBackend: device {device!r} is not available; it runs on 'cpu' only")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"TracerBackend: history must be a positive int, got {history!r}")
        super().__init__(dtype, device)
        self.history: deque[Trace] = deque(maxlen=history)
        self.trace: Trace | None = None
        self._rng = np.random.default_rng()

    # -- tracing ---------------------------------------------------------------------
    def begin(self, kind: str) -> None:
        """Start the trace of a new evaluate call."""
        self.trace = Trace(kind)
        self.history.append(self.trace)

    def record(self, primitive: str, path: str, phase: str, inputs: tuple[Any, ...], value: Any) -> Any:
        """Called by the generated code around every op; returns `value` unchanged."""
        outputs = value if isinstance(value, tuple) else (value,)
        if self.trace is not None:
            shapes_in = tuple(np.shape(x) for x in inputs)
            self.trace.ops.append(OpRecord(primitive, path, phase, shapes_in, tuple(np.shape(y) for y in outputs)))
        return value

    # -- lowering ------------------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> TracerProgram:
        return TracerProgram(self, graph, options)
