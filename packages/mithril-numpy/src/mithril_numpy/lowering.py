"""Lowering a typed graph to generated NumPy code with a hand-derived backward pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mithril.backend import CompileOptions, Program
from mithril.codegen import PythonCodegen, forward_function, vjp_functions
from mithril.errors import KeyNotFoundError
from mithril.graph import Graph
from mithril.validation import make_diagnose

from . import ops, vjps

if TYPE_CHECKING:
    from .backend import NumpyBackend

__all__ = ["NumpyProgram"]


class NumpyProgram(Program):
    """Generated `forward` and `forward_backward`; other output subsets are built on demand."""

    def __init__(self, backend: NumpyBackend, graph: Graph, options: CompileOptions) -> None:
        self.graph = graph
        self.options = options
        namespace = {**ops.NAMESPACE, **vjps.NAMESPACE, "_partial": self._partial, "_backend": backend}
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace, vjps.VJPS)
        self.diagnose = self.gen.constant(make_diagnose(graph, backend), "diagnose")
        self._subsets: dict[frozenset[str], Any] = {}
        if options.inference:
            self.source = forward_function(self.gen, self.diagnose)
        else:
            self.source = vjp_functions(self.gen, self.diagnose, graph.outputs, "np.zeros_like({})", "_partial")
        namespace = self.gen.build(self.source, options.file_path)
        self.forward = namespace["forward"]  # type: ignore[method-assign]
        if not options.inference:
            self.forward_backward = namespace["forward_backward"]  # type: ignore[method-assign]

    def _partial(self, params: Any, inputs: Any, output_gradients: Mapping[str, Any]) -> Any:
        names = {e.name for e in self.graph.outputs if e.updates is None}
        if not isinstance(output_gradients, Mapping):
            raise TypeError("output_gradients must be a dict keyed by output name")
        unknown = [k for k in output_gradients if k not in names]
        if unknown or not output_gradients:
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: output_gradients keys {sorted(map(str, output_gradients))} "
                f"must be a non-empty subset of the outputs {sorted(names)}"
            )
        key = frozenset(output_gradients)
        fn = self._subsets.get(key)
        if fn is None:
            edges = [e for e in self.graph.outputs if e.name in key]
            source = vjp_functions(self.gen, self.diagnose, edges, "np.zeros_like({})", None)
            fn = self._subsets[key] = self.gen.build(source)["forward_backward"]
        return fn(params, inputs, output_gradients)

