"""Lowering a typed graph to generated torch code; gradients through torch autograd.

`forward` runs the ops with grad mode off (no autograd bookkeeping at all);
`forward_backward` runs them on detached, grad-requiring copies of the float
parameters and calls `torch.autograd.grad` once. Grad mode is switched with
`torch._C._set_grad_enabled` in try/finally rather than a context-manager object,
which costs a fraction of `with torch.no_grad():` and is thread- and reentrancy-safe.
With jit, the ops live in one function compiled by `torch.compile`.

On a device mesh (`mithril_torch.distributed`) the arrays are DTensors: each call first places
params, inputs and output gradients by their keys' placements, the generated code ends by
placing each output (a loss summed over a batch split among ranks becomes one replicated
value there), and the partial gradients are summed with one flat all-reduce per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mithril.backend import CompileOptions, Program
from mithril.codegen import GradientSubsets, PythonCodegen, free_after_last_use, function
from mithril.graph import Edge, Graph, Node
from mithril.primitives import get as declaration
from mithril.validation import make_diagnose

from . import ops
from .precision import SWITCH

if TYPE_CHECKING:
    from .backend import TorchBackend
    from .distributed import TorchLayout

__all__ = ["TorchProgram"]


class TorchProgram(Program):
    """Generated `forward` and `forward_backward` (gradients given for every output but the state updates).

    Other output subsets, e.g. the logits alone of a model that also returns a loss, are built on demand.
    """

    def __init__(
        self,
        backend: TorchBackend,
        graph: Graph,
        options: CompileOptions,
        compile_options: Mapping[str, Any],
        precision: str = "highest",
        shardings: Mapping[str, Any] | None = None,
    ) -> None:
        self.graph = graph
        self.options = options
        self.layout: TorchLayout | None = None
        if backend.mesh is not None:
            from .distributed import TorchLayout  # noqa: PLC0415 - torch.distributed.tensor is slow to import

            self.layout = TorchLayout(backend.mesh, graph, shardings or {})
        # TF32 exists on CUDA only: elsewhere float32 is full precision and calls switch nothing
        self.precision = precision if precision != "default" and backend.device_type == "cuda" else None
        namespace = {
            **ops.NAMESPACE,
            "_partial": GradientSubsets(graph, self._subset_function),
            "_grad": torch.autograd.grad,
            "_grad_enabled": torch.is_grad_enabled,
            "_set_grad": torch._C._set_grad_enabled,
            "_zeros_like": torch.zeros_like,
            "_torch_compile": torch.compile,
            "_generator": backend.generator,
            "_fp32_enter": SWITCH.enter,
            "_fp32_exit": SWITCH.exit,
            ops.FLOAT_DTYPE: backend.native_dtype(backend.dtype),
            "_place_output": self._place_output,
        }
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace)
        self.diagnose = self.gen.constant(make_diagnose(graph, backend), "diagnose")
        sources = []
        if options.jit:
            sources.append(self._core_source(compile_options))
        sources.append(
            function(
                "forward",
                "params, inputs",
                [
                    *self.gen.load_lines(self.diagnose),
                    *self._with_precision(self._run(False)),
                    f"return {self.gen.outputs_expr()}",
                ],
            )
        )
        if not options.inference:
            seeded = [e for e in graph.outputs if e.updates is None]
            sources.append(self._forward_backward_source(seeded, partial=True))
        self.source = "\n\n".join(sources)
        built = self.gen.build(self.source, options.file_path)
        if options.jit:
            self.gen.namespace["_core"] = built["_core"]
        self.forward = built["forward"]
        if not options.inference:
            self.forward_backward = built["forward_backward"]
        if self.layout is not None:
            self.forward, self.forward_backward = self._on_mesh(self.forward, getattr(self, "forward_backward", None))

    # -- device meshes -------------------------------------------------------------------
    def _place_output(self, value: Any, key: str) -> Any:
        """An output DTensor redistributed to its key's placements (differentiably), e.g. a partial loss replicated."""
        assert self.layout is not None
        placements = self.layout.placements[key]
        if hasattr(value, "placements") and tuple(value.placements) != placements:
            return value.redistribute(self.layout.mesh, placements)
        return value

    def place_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """On a device mesh, `params` as DTensors with their keys' placements (sharded ones split); else as given."""
        if self.layout is None:
            return params
        return dict(self.layout.place(params, f"{self.graph.model.describe()} on mesh {dict(self.layout.sizes)}"))

    def _on_mesh(self, forward: Any, forward_backward: Any) -> tuple[Any, Any]:
        """`forward` and `forward_backward` that place their arguments first and all-reduce the gradients."""
        from .distributed import all_reduce_gradients, collective_error  # noqa: PLC0415

        layout = self.layout
        assert layout is not None
        where = f"{self.graph.model.describe()} on mesh {dict(layout.sizes)}"

        def mesh_forward(params: Any, inputs: Any) -> Any:
            try:
                return forward(layout.place(params, where), layout.place(inputs, where))
            except RuntimeError as error:
                raise collective_error(error, where) from error

        def mesh_forward_backward(params: Any, inputs: Any, output_gradients: Any) -> Any:
            try:
                placed = layout.place(output_gradients, where)
                outputs, grads = forward_backward(layout.place(params, where), layout.place(inputs, where), placed)
            except RuntimeError as error:
                raise collective_error(error, where) from error
            return outputs, all_reduce_gradients(grads, layout)

        return mesh_forward, None if forward_backward is None else mesh_forward_backward

    # -- pieces of the generated source ------------------------------------------------
    def _core_source(self, compile_options: Mapping[str, Any]) -> str:
        """`_core(params..., inputs...) -> outputs`, the ops only, wrapped by torch.compile."""
        g = self.gen
        args = ", ".join(g.names[e] for e in [*self.graph.params, *self.graph.inputs])
        outs = ", ".join(g.names[e] for e in self.graph.outputs)
        core = function("_core", args, [*g.forward_lines(), f"return ({outs},)"])
        return core + f"\n_core = _torch_compile(_core, **{g.constant(dict(compile_options), 'compile_options')})\n"

    def _ops_lines(self) -> list[str]:
        """The ops inline, or one call of the compiled `_core` under jit; on a mesh, then each output placed."""
        if self.layout is not None:
            g = self.gen
            placed = [f"{g.names[e]} = _place_output({g.names[e]}, {e.name!r})" for e in self.graph.outputs]
            return [*self._eager_lines(), *placed]
        if not self.options.jit:
            return self._eager_lines()
        g = self.gen
        args = ", ".join(g.names[e] for e in [*self.graph.params, *self.graph.inputs])
        outs = ", ".join(g.names[e] for e in self.graph.outputs)
        return [f"{outs}, = _core({args})"]

    def _eager_lines(self) -> list[str]:
        """The ops in order, each intermediate deleted after its last use.

        Freeing intermediates as early as hand-written code does keeps the working set
        small: the allocator hands the same, cache-warm memory to the next op.
        """
        g = self.gen
        internal = {g.names[e] for e in self.graph.edges if e.producer is not None and e.role == "internal"}
        return free_after_last_use(g.forward_lines(), internal, {g.names[e] for e in self.graph.outputs})

    def _run(self, grad_mode: bool) -> list[str]:
        """The ops with torch grad mode set to `grad_mode`, restored afterwards even on error (none: no switch)."""
        body = [f"    {line}" for line in self._ops_lines()]
        if not body:
            return []
        was = self.gen.fresh("grad_was")
        return [
            f"{was} = _grad_enabled()",
            f"_set_grad({grad_mode})",
            "try:",
            *body,
            "finally:",
            f"    _set_grad({was})",
        ]

    def _with_precision(self, lines: list[str]) -> list[str]:
        """`lines` with torch's TF32 flags set for the compile option `precision`, restored after (CUDA only)."""
        if self.precision is None or not lines:
            return lines
        return [
            f"_fp32_enter({self.precision!r})",
            "try:",
            *(f"    {line}" for line in lines),
            "finally:",
            "    _fp32_exit()",
        ]

    def _forward_backward_source(self, grad_edges: Sequence[Edge], partial: bool) -> str:
        """`forward_backward` for gradients given on `grad_edges`."""
        g = self.gen
        reach = _ancestors(self.graph, grad_edges)
        wrt = [e for e in self.graph.params if e.kind == "float" and e in reach]
        live = _descendants(self.graph, wrt)
        roots = [e for e in grad_edges if e in live]
        grad_names = [g.fresh(f"g_{g.names[e]}") for e in grad_edges]
        head = (
            [
                f"if len(output_gradients) != {len(grad_edges)}:",
                "    return _partial(params, inputs, output_gradients)",
            ]
            if partial
            else []
        )
        body = [*head, *g.load_lines(self.diagnose)]
        body += [f"{g.names[e]} = {g.names[e]}.detach().requires_grad_()" for e in wrt]
        run = [*self._run(bool(roots)), *g.grad_check_lines(grad_edges, grad_names, self.diagnose)]
        result = g.fresh("grads")
        if roots:
            outs = ", ".join(g.names[e] for e in roots)
            gouts = ", ".join(gn for e, gn in zip(grad_edges, grad_names) if e in live)
            params = ", ".join(g.names[e] for e in wrt)
            run.append(f"{result} = _grad(({outs},), ({params},), ({gouts},), allow_unused=True)")
        body += self._with_precision(run)
        index = {e: i for i, e in enumerate(wrt)}
        grads = []
        for e in self.graph.params:
            name = g.names[e]
            if e in index:
                item = f"{result}[{index[e]}]"
                value = f"{item} if {item} is not None else _zeros_like({name})"
            else:
                value = f"_zeros_like({name})"
            grads.append(f"{e.name!r}: {value}")
        detached = {g.names[e] for e in self.graph.outputs if e in live}
        outputs = g.outputs_expr(lambda v: f"{v}.detach()" if v in detached else v)
        body.append(f"return {outputs}, {{{', '.join(grads)}}}")
        return function("forward_backward", "params, inputs, output_gradients", body)

    def _subset_function(self, edges: list[Edge]) -> Any:
        """forward_backward seeded by the gradients of `edges` only."""
        return self.gen.build(self._forward_backward_source(edges, partial=False))["forward_backward"]


def _carries_gradient(node: Node, key: str, live: set[Edge]) -> bool:
    """Whether output `key` of `node` depends differentiably on an edge in `live`, by the primitive's declaration.

    State updates (running statistics) never do, nor outputs computed only from inputs the
    declaration marks non-differentiable (a dropout mask, a comparison).
    """
    decl = declaration(node.primitive)
    if key in decl.state_updates or node.outputs[key].kind != "float":
        return False
    return any(e in live and decl.differentiable(k) for k, e in node.inputs.items())


def _ancestors(graph: Graph, edges: Sequence[Edge]) -> set[Edge]:
    """Every edge that `edges` are computed from (through float values), and `edges` themselves."""
    seen = set(edges)
    for node in reversed(graph.nodes):
        if any(e in seen for e in node.outputs.values() if e.kind == "float"):
            seen.update(node.inputs.values())
    return seen


def _descendants(graph: Graph, edges: Sequence[Edge]) -> set[Edge]:
    """Every float edge differentiably computed from `edges`, and `edges` themselves.

    Updated running statistics and dropout masks are left out: they never require grad.
    """
    seen = set(edges)
    for node in graph.nodes:
        seen.update(e for k, e in node.outputs.items() if _carries_gradient(node, k, seen))
    return seen
