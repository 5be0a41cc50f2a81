"""The tracer backend: NumPy code from the core's generator, with every primitive call recorded.

Each `evaluate` call of a compiled model starts a new `Trace`; every primitive the
generated code executes (forward ops, and the gradient rules of the backward pass)
appends an `OpRecord` with its input and output shapes. `backend.trace` is the last
call's trace, `backend.history` the most recent ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions, OpImpl, Program
from mithril.codegen import GradientSubsets, PythonCodegen, forward_function, vjp_functions
from mithril.dtypes import DType
from mithril.graph import Edge, Graph, Node
from mithril.host_arrays import HostArrays
from mithril.validation import make_diagnose
from mithril_numpy import ops as numpy_ops
from mithril_numpy import vjps as numpy_vjps

__all__ = ["TracerBackend", "OpRecord", "Trace", "UNSUPPORTED"]

# Primitives this backend leaves out on purpose: compiling a model that uses one fails with
# UnsupportedError naming it (the conformance kit checks that).
UNSUPPORTED = frozenset({"conv2d", "max_pool2d", "avg_pool2d", "dropout"})


Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpRecord:
    """One executed primitive: which node ran, in which pass, on which shapes."""

    primitive: str
    path: str
    phase: str  # "forward", or "backward" for a gradient rule
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
            rows.append(f"  {op.phase:<8} {op.primitive:<12} {op.path:<20} {ins} -> {outs}")
        return "\n".join(rows)


class TracingCodegen(PythonCodegen):
    """PythonCodegen whose every op expression is wrapped in a call to `_record`."""

    def expr(self, node: Node, impl: OpImpl, args: Mapping[str, str]) -> str:
        inner = super().expr(node, impl, args)
        phase = "forward" if impl is self.ops[node.primitive] else "backward"
        inputs = "".join(f"{args[key]}, " for key in node.inputs)
        return f"_record({node.primitive!r}, {node.path!r}, {phase!r}, ({inputs}), {inner})"


class TracerProgram(Program):
    """Generated forward (and backward) functions; each call opens a new trace on the backend."""

    def __init__(self, backend: TracerBackend, graph: Graph, options: CompileOptions) -> None:
        self.backend = backend
        self.graph = graph
        namespace = {
            **numpy_ops.NAMESPACE,
            **numpy_vjps.NAMESPACE,
            "_record": backend.record,
            "_partial": GradientSubsets(graph, self._subset_function),
        }
        self.gen = TracingCodegen(graph, backend, backend.op_table(), namespace, numpy_vjps.VJPS)
        self.diagnose = self.gen.constant(make_diagnose(graph, backend), "diagnose")
        if options.inference:
            self.source = forward_function(self.gen, self.diagnose)
        else:
            self.source = vjp_functions(self.gen, self.diagnose, graph.outputs, "np.zeros_like({})", "_partial")
        functions = self.gen.build(self.source, options.file_path)
        self._forward = functions["forward"]
        self._forward_backward = functions.get("forward_backward")  # absent when compiled for inference

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

    def _subset_function(self, edges: list[Edge]) -> Any:
        """forward_backward seeded by the gradients of `edges` only (the core caches one per subset)."""
        source = vjp_functions(self.gen, self.diagnose, edges, "np.zeros_like({})", None)
        return self.gen.build(source)["forward_backward"]


class TracerBackend(HostArrays, Backend):
    """NumPy on the CPU (float32, float64) with an op-level trace of every evaluate call.

    history: how many traces `backend.history` keeps (the oldest are dropped).
    """

    name = "tracer"
    supported_dtypes = (ml.float32, ml.float64)
    supports_gradients = True
    supports_jit = False
    ops = {k: v for k, v in numpy_ops.OPS.items() if k not in UNSUPPORTED}

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
        unknown = sorted(set(options.extra) - {"static_inference"})
        if unknown:
            raise TypeError(f"ml.compile: unknown option(s) {unknown} for backend 'tracer'")
        return TracerProgram(self, graph, options)
