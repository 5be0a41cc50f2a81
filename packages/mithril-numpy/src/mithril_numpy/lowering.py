"""Lowering a typed graph to generated NumPy code with a hand-derived backward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mithril.backend import CompileOptions, Program
from mithril.codegen import GradientSubsets, PythonCodegen, forward_function, vjp_functions
from mithril.graph import Edge, Graph
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
        partial = GradientSubsets(graph, self._subset_function)
        namespace = {**ops.NAMESPACE, **vjps.NAMESPACE, "_partial": partial, "_backend": backend}
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace, vjps.VJPS)
        self.diagnose = self.gen.constant(make_diagnose(graph, backend), "diagnose")
        if options.inference:
            self.source = forward_function(self.gen, self.diagnose)
        else:
            self.source = vjp_functions(self.gen, self.diagnose, graph.outputs, "np.zeros_like({})", "_partial")
        namespace = self.gen.build(self.source, options.file_path)
        self.forward = namespace["forward"]
        if not options.inference:
            self.forward_backward = namespace["forward_backward"]

    def _subset_function(self, edges: list[Edge]) -> Any:
        """forward_backward seeded by the gradients of `edges` only."""
        source = vjp_functions(self.gen, self.diagnose, edges, "np.zeros_like({})", None)
        return self.gen.build(source)["forward_backward"]
