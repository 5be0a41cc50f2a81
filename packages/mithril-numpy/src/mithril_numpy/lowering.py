"""Lowering a typed graph to generated NumPy code; gradients from the core's backward graph."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mithril.backend import CompileOptions, Program
from mithril.codegen import GradientSubsets, PythonCodegen, forward_function, joint_functions
from mithril.compiler import collector_paused
from mithril.graph import Edge, Graph
from mithril.primitives import joint_graph
from mithril.primitives.transform import check_gradients, release
from mithril.validation import make_diagnose

from . import fusions, ops

if TYPE_CHECKING:
    from .backend import NumpyBackend

__all__ = ["NumpyProgram"]


class NumpyProgram(Program):
    """Generated `forward` at compile; `forward_backward` generated when first called (or its source first read).

    Inference-only users never pay for the backward pass, as with JAX's compile on first call.
    `ml.compile` still refuses a model it could not differentiate (`check_gradients`); with
    `file_path` everything is generated at compile, so the file holds the whole source.
    """

    def __init__(self, backend: NumpyBackend, graph: Graph, options: CompileOptions) -> None:
        self.graph = graph
        self.options = options
        self.backend = backend
        self.table = backend.op_table()
        self.namespace = {
            **ops.NAMESPACE,
            "_partial": GradientSubsets(graph, self._subset_function),
            "_backend": backend,
        }
        gen = PythonCodegen(graph, backend, self.table, self.namespace)
        self.diagnose = make_diagnose(graph, backend)
        self._forward_source = forward_function(gen, gen.constant(self.diagnose, "diagnose"))
        self._gradients: Callable[..., Any] | None = None
        self._gradients_source = ""
        self._lock = threading.Lock()
        if options.inference:
            self.forward = gen.build(self._forward_source, options.file_path)["forward"]
            return
        check_gradients(graph, self.table.__contains__)
        if options.file_path is None:
            self.forward = gen.build(self._forward_source)["forward"]
            return
        joint = self._joint_codegen(graph.outputs)
        self._gradients_source = self._joint_source(joint)
        gen.namespace.update(joint.namespace)
        namespace = gen.build(self._forward_source + "\n\n" + self._gradients_source, options.file_path)
        self.forward = namespace["forward"]
        self._gradients = namespace["forward_backward"]

    @property
    def source(self) -> str:  # type: ignore[override]  # read-only: generated on first read
        """The whole generated source: reading it generates `forward_backward` if no call has yet."""
        if self.options.inference:
            return self._forward_source
        self._built_gradients()
        return self._forward_source + "\n\n" + self._gradients_source

    def forward_backward(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The generated forward_backward, generated at the first call."""
        return (self._gradients or self._built_gradients())(params, inputs, output_gradients)

    def _built_gradients(self) -> Callable[..., Any]:
        """Generate and compile forward_backward once, however many threads ask at the same time.

        The cyclic collector is paused meanwhile, as in ml.compile: the build makes many objects, all kept."""
        with self._lock, collector_paused():
            if self._gradients is None:
                joint = self._joint_codegen(self.graph.outputs)
                source = self._joint_source(joint)
                self._gradients = joint.build(source)["forward_backward"]
                self._gradients_source = source
            return self._gradients

    def _joint_source(self, joint: PythonCodegen) -> str:
        """forward_backward's source for the full set of outputs; releases the joint graph."""
        source = joint_functions(joint, joint.constant(self.diagnose, "diagnose"), "_partial")
        release(joint.graph)
        return source

    def _joint_codegen(self, seeds: list[Edge]) -> PythonCodegen:
        joint = fusions.fuse(joint_graph(self.graph, [e.name for e in seeds], self.table.__contains__))
        return PythonCodegen(joint, self.backend, self.table | fusions.OPS, self.namespace)

    def _subset_function(self, edges: list[Edge]) -> Any:
        """forward_backward seeded by the gradients of `edges` only (the collector paused, as above)."""
        with collector_paused():
            gen = self._joint_codegen(edges)
            source = joint_functions(gen, gen.constant(self.diagnose, "diagnose"), None)
            release(gen.graph)
            return gen.build(source)["forward_backward"]
