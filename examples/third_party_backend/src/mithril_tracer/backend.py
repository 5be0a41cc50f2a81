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
from mithril.codegen import PythonCodegen, forward_function, vjp_functions
from mithril.dtypes import DType, as_dtype
from mithril.errors import KeyNotFoundError
from mithril.graph import Graph, Node
from mithril.validation import make_diagnose
from mithril_numpy import ops as numpy_ops
from mithril_numpy import vjps as numpy_vjps

__all__ = ["TracerBackend", "OpRecord", "Trace", "UNSUPPORTED"]

# Primitives this backend leaves out on purpose: compiling a model that uses one fails with
# UnsupportedError naming it (the conformance kit checks that).
UNSUPPORTED = frozenset({"conv2d", "max_pool2d", "avg_pool2d", "dropout"})

_NATIVE: dict[DType, np.dtype[Any]] = {
    ml.float32: np.dtype(np.float32),
    ml.float64: np.dtype(np.float64),
    ml.int32: np.dtype(np.int32),
    ml.int64: np.dtype(np.int64),
    ml.bool: np.dtype(np.bool_),
}
_CORE = {v: k for k, v in _NATIVE.items()}

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
            "_partial": self._partial,
        }
        self.gen = TracingCodegen(graph, backend, backend.op_table(), namespace, numpy_vjps.VJPS)
        self.diagnose = self.gen.constant(make_diagnose(graph, backend), "diagnose")
        self._subsets: dict[frozenset[str], Any] = {}
        if options.inference:
            self.source = forward_function(self.gen, self.diagnose)
        else:
            self.source = vjp_functions(self.gen, self.diagnose, graph.outputs, "np.zeros_like({})", "_partial")
        functions = self.gen.build(self.source, options.file_path)
        self._forward = functions["forward"]
        self._forward_backward = functions.get("forward_backward")

    def forward(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.backend.begin("forward")
        result: dict[str, Any] = self._forward(params, inputs)
        return result

    def forward_backward(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self._forward_backward is not None, "compiled for inference only"
        self.backend.begin("forward_backward")
        result: tuple[dict[str, Any], dict[str, Any]] = self._forward_backward(params, inputs, output_gradients)
        return result

    def _partial(self, params: Any, inputs: Any, output_gradients: Mapping[str, Any]) -> Any:
        """Gradients for a subset of the outputs: one generated function per subset, built on first use."""
        names = {e.name for e in self.graph.outputs if e.updates is None}
        if not isinstance(output_gradients, Mapping):
            raise TypeError("output_gradients must be a dict keyed by output name")
        if not output_gradients or not set(output_gradients) <= names:
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: output_gradients keys {sorted(map(str, output_gradients))} "
                f"must be a non-empty subset of the outputs {sorted(names)}"
            )
        key = frozenset(output_gradients)
        if key not in self._subsets:
            edges = [e for e in self.graph.outputs if e.name in key]
            source = vjp_functions(self.gen, self.diagnose, edges, "np.zeros_like({})", None)
            self._subsets[key] = self.gen.build(source)["forward_backward"]
        return self._subsets[key](params, inputs, output_gradients)


class TracerBackend(Backend):
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

    # -- dtypes ------------------------------------------------------------------------
    def native_dtype(self, dtype: DType) -> np.dtype[Any]:
        return _NATIVE[dtype]

    def dtype_of(self, array: Any) -> DType | None:
        return _CORE.get(getattr(array, "dtype", None))  # type: ignore[arg-type]

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def _native(self, dtype: DType | None) -> np.dtype[Any]:
        return _NATIVE[self.dtype if dtype is None else as_dtype(dtype)]

    # -- array helpers ---------------------------------------------------------------------
    def array(self, data: Any, dtype: DType | None = None) -> np.ndarray:
        """A NumPy array; floating data takes the backend dtype unless `dtype` says otherwise."""
        arr = np.asarray(data)
        if dtype is not None or arr.dtype.kind == "f":
            return arr.astype(self._native(dtype), copy=False)
        return arr

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def set_seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def randn(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=self._native(dtype))

    def rand(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return self._rng.random(shape, dtype=self._native(dtype))

    def ones(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.ones(shape, self._native(dtype))

    def zeros(self, *shape: int, dtype: DType | None = None) -> np.ndarray:
        return np.zeros(shape, self._native(dtype))

    def mean(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return np.mean(x, axis=axis, keepdims=keepdim)

    def sum(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Any:
        return np.sum(x, axis=axis, keepdims=keepdim)

    def matmul(self, a: Any, b: Any) -> Any:
        return np.matmul(a, b)

    # -- lowering ------------------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> TracerProgram:
        unknown = sorted(set(options.extra) - {"static_inference"})
        if unknown:
            raise TypeError(f"ml.compile: unknown option(s) {unknown} for backend 'tracer'")
        return TracerProgram(self, graph, options)
