"""Lowering a typed graph to generated jnp code, differentiated by jax.vjp and jitted once.

The generated `forward` checks its arguments like every Python backend's; under jit those
checks run while tracing, so they cost nothing per call. `forward_backward` pulls the
given output gradients back through `jax.vjp`; gradients for a subset of the outputs
differentiate only those (jit keeps one trace per subset); state-update outputs (running
statistics) ride along undifferentiated. A call that fails before or while tracing is
re-diagnosed by the core so the user sees which key is wrong.

Models with random primitives (dropout) get one more argument, a PRNG key that the
backend splits off its own key for every call (so `set_seed` makes runs repeatable, and
successive calls draw fresh masks without retracing); each random node folds its own
stream index into it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax

from mithril.backend import CompileOptions, Program
from mithril.codegen import PythonCodegen, function
from mithril.errors import KeyNotFoundError, MithrilError, NoFaultFound
from mithril.graph import Graph
from mithril.validation import make_diagnose

from . import ops
from .sharding import Layout

if TYPE_CHECKING:
    from .backend import JaxBackend

__all__ = ["JaxProgram", "COMPILE_OPTIONS"]

COMPILE_OPTIONS = ("shardings",)



def _forward_backward(args: str) -> str:
    """Source of `forward_backward`: `forward` differentiated by jax.vjp for the given output gradients."""
    return function(
        "forward_backward",
        f"params, inputs, output_gradients{args}",
        [
            "def differentiated(params):",
            f"    outputs = forward(params, inputs{args})",
            "    return _select(params, inputs, outputs, output_gradients), outputs",
            "selected, pullback, outputs = _vjp(differentiated, params, has_aux=True)",
            "(gradients,) = pullback(output_gradients)",
            "return outputs, gradients",
        ],
    )


class JaxProgram(Program):
    """Generated `forward` and `forward_backward`, jitted (and placed on a mesh) as compiled."""

    def __init__(self, backend: JaxBackend, graph: Graph, options: CompileOptions) -> None:
        self.graph = graph
        self.options = options
        self.backend = backend
        unknown = sorted(set(options.extra) - set(COMPILE_OPTIONS))
        if unknown:
            raise TypeError(
                f"ml.compile: unknown option(s) {unknown} for backend 'jax'; valid options are {list(COMPILE_OPTIONS)}"
            )
        shardings = options.extra.get("shardings")
        if shardings is not None and backend.mesh is None:
            raise ValueError(
                "ml.compile: shardings= needs a backend with a device mesh, e.g. JaxBackend(device_mesh=(8,))"
            )
        self._output_order = [e.name for e in graph.outputs] if len(graph.outputs) > 1 else None
        self.layout = None if backend.mesh is None else Layout(backend.mesh, graph, shardings or {})
        random = [n for n in graph.nodes if n.primitive in ops.RANDOM]
        self.random = bool(random)
        namespace = {**ops.NAMESPACE, "_vjp": jax.vjp, "_select": self._select,
                     ops.RNG_STREAMS: {n.path: i for i, n in enumerate(random)}}
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace)
        self._diagnose = make_diagnose(graph, backend)
        diagnose = self.gen.constant(self._diagnose, "diagnose")
        key = f", {ops.RNG_KEY}" if self.random else ""
        body = [*self.gen.load_lines(diagnose), *self.gen.forward_lines(), f"return {self.gen.outputs_expr()}"]
        self.source = function("forward", f"params, inputs{key}", body)
        if not options.inference:
            self.source += "\n\n" + _forward_backward(key)
        built = self.gen.build(self.source, options.file_path)
        self._raw_forward: Callable[..., Any] = built["forward"]
        self.forward = self._guard_forward(self._compiled(self._raw_forward, False))
        if not options.inference:
            fb = self._compiled(built["forward_backward"], True)
            self.forward_backward = self._guard_forward_backward(fb)

    # -- compilation -----------------------------------------------------------------
    def _compiled(self, fn: Callable[..., Any], with_gradients: bool) -> Callable[..., Any]:
        """`fn` under jax.jit when jit is on; on a mesh, its outputs pinned to their shardings."""
        if not self.options.jit:
            return fn
        if self.layout is None:
            return jax.jit(fn)
        outs: Any = (self.layout.outputs, self.layout.params) if with_gradients else self.layout.outputs
        return jax.jit(fn, out_shardings=outs)

    def _guard_forward(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """The per-call function around `call`: a fresh PRNG key, arguments on the mesh, outputs in graph order."""
        explain, layout, order = self._explain, self.layout, self._output_order
        next_key = self.backend.next_key if self.random else None
        if layout is None and order is None and next_key is None:

            def forward(params: Any, inputs: Any) -> Any:
                try:
                    return call(params, inputs)
                except Exception as error:
                    explain(error, params, inputs)
                    raise

            return forward

        def placed_forward(params: Any, inputs: Any) -> Any:
            extra = () if next_key is None else (next_key(),)
            try:
                if layout is None:
                    outputs = call(params, inputs, *extra)
                else:
                    outputs = call(layout.put(params, layout.params), layout.put(inputs, layout.inputs), *extra)
            except Exception as error:
                explain(error, params, inputs)
                raise
            return outputs if order is None else {k: outputs[k] for k in order}

        return placed_forward

    def _guard_forward_backward(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """Like `_guard_forward` for (params, inputs, output_gradients); gradients come keyed like params."""
        explain, layout, order = self._explain, self.layout, self._output_order
        next_key = self.backend.next_key if self.random else None

        def forward_backward(params: Any, inputs: Any, output_gradients: Any) -> Any:
            extra = () if next_key is None else (next_key(),)
            try:
                if layout is None:
                    outputs, grads = call(params, inputs, output_gradients, *extra)
                else:
                    outputs, grads = call(
                        layout.put(params, layout.params),
                        layout.put(inputs, layout.inputs),
                        layout.put(output_gradients, layout.outputs),
                        *extra,
                    )
            except Exception as error:
                explain(error, params, inputs, output_gradients)
                raise
            return outputs if order is None else {k: outputs[k] for k in order}, {k: grads[k] for k in params}

        return forward_backward

    # -- checks ------------------------------------------------------------------------
    def _select(self, params: Any, inputs: Any, outputs: dict[str, Any], output_gradients: Any) -> dict[str, Any]:
        """The outputs that `output_gradients` differentiate, after checking its keys, shapes and dtypes."""
        if not isinstance(output_gradients, Mapping) or not output_gradients:
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: output_gradients must be a non-empty dict keyed by output name; "
                f"outputs are {list(outputs)}"
            )
        for key, grad in output_gradients.items():
            if (
                key not in outputs
                or getattr(grad, "shape", None) != outputs[key].shape
                or getattr(grad, "dtype", None) != outputs[key].dtype
            ):
                self._diagnose(params, inputs, output_gradients, outputs)
        return {key: outputs[key] for key in output_gradients}

    def _explain(self, error: Exception, params: Any, inputs: Any, output_gradients: Any = None) -> None:
        """Raise the core's diagnosis of a failed call, if it finds one; else return to re-raise `error`."""
        if isinstance(error, MithrilError):
            return
        try:
            self._diagnose(params, inputs)
        except NoFaultFound:
            pass
        except (MithrilError, TypeError) as found:
            raise found from None
        extra = (self.backend.next_key(),) if self.random else ()
        outputs = jax.eval_shape(self._raw_forward, params, inputs, *extra)
        if output_gradients is not None:
            if not isinstance(output_gradients, Mapping):
                raise TypeError(f"{self.graph.model.describe()}: output_gradients must be a dict keyed by output name")
            try:
                self._select(params, inputs, outputs, output_gradients)
            except NoFaultFound:
                pass
        if self.layout is not None:
            where = f"{self.graph.model.describe()} on mesh {dict(self.layout.mesh.shape)}"
            self.layout.check_call(inputs, where)
            self.layout.check_call(outputs, where)
