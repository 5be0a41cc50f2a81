"""Lowering a typed graph to generated jnp code, differentiated by jax.vjp and jitted once.

The generated `forward` checks its arguments like every Python backend's; under jit those
checks run while tracing, so they cost nothing per call. `forward_backward` pulls the
given output gradients back through `jax.vjp`; gradients for a subset of the outputs
differentiate only those (jit keeps one trace per subset). A call that fails before or
while tracing is re-diagnosed by the core so the user sees which key is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax

from mithril.backend import CompileOptions, Program
from mithril.codegen import PythonCodegen, forward_function, function
from mithril.errors import DTypeMismatchError, KeyNotFoundError, MithrilError
from mithril.graph import Graph
from mithril.validation import make_diagnose

from . import ops
from .sharding import Layout

if TYPE_CHECKING:
    from .backend import JaxBackend

__all__ = ["JaxProgram", "COMPILE_OPTIONS"]

COMPILE_OPTIONS = ("shardings",)

_FORWARD_BACKWARD = function(
    "forward_backward",
    "params, inputs, output_gradients",
    [
        "def differentiated(params):",
        "    outputs = forward(params, inputs)",
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
        namespace = {**ops.NAMESPACE, "_vjp": jax.vjp, "_select": self._select}
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace)
        self._diagnose = make_diagnose(graph, backend)
        diagnose = self.gen.constant(self._diagnose, "diagnose")
        self.source = forward_function(self.gen, diagnose)
        if not options.inference:
            self.source += "\n\n" + _FORWARD_BACKWARD
        built = self.gen.build(self.source, options.file_path)
        self._raw_forward: Callable[..., Any] = built["forward"]
        self.forward = self._guard_forward(self._compiled(self._raw_forward, False))  # type: ignore[method-assign]
        if not options.inference:
            fb = self._compiled(built["forward_backward"], True)
            self.forward_backward = self._guard_forward_backward(fb)  # type: ignore[method-assign]

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
        """The per-call function around `call`: arguments placed on the mesh, outputs in graph order."""
        explain, layout, order = self._explain, self.layout, self._output_order
        if layout is None and order is None:

            def forward(params: Any, inputs: Any) -> Any:
                try:
                    return call(params, inputs)
                except Exception as error:
                    explain(error, params, inputs)
                    raise

            return forward

        def placed_forward(params: Any, inputs: Any) -> Any:
            try:
                if layout is None:
                    outputs = call(params, inputs)
                else:
                    outputs = call(layout.put(params, layout.params), layout.put(inputs, layout.inputs))
            except Exception as error:
                explain(error, params, inputs)
                raise
            return outputs if order is None else {k: outputs[k] for k in order}

        return placed_forward

    def _guard_forward_backward(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """Like `_guard_forward` for (params, inputs, output_gradients); gradients come keyed like params."""
        explain, layout, order = self._explain, self.layout, self._output_order

        def forward_backward(params: Any, inputs: Any, output_gradients: Any) -> Any:
            try:
                if layout is None:
                    outputs, grads = call(params, inputs, output_gradients)
                else:
                    outputs, grads = call(
                        layout.put(params, layout.params),
                        layout.put(inputs, layout.inputs),
                        layout.put(output_gradients, layout.outputs),
                    )
            except Exception as error:
                explain(error, params, inputs, output_gradients)
                raise
            return outputs if order is None else {k: outputs[k] for k in order}, {k: grads[k] for k in params}

        return forward_backward

    # -- checks ------------------------------------------------------------------------
    def _select(self, params: Any, inputs: Any, outputs: dict[str, Any], output_gradients: Any) -> dict[str, Any]:
        """The outputs that `output_gradients` differentiate, after checking its keys, shapes and dtypes."""
        owner = self.graph.model.describe()
        if not isinstance(output_gradients, Mapping) or not output_gradients:
            raise KeyNotFoundError(
                f"{owner}: output_gradients must be a non-empty dict keyed by output name; outputs are {list(outputs)}"
            )
        for key, grad in output_gradients.items():
            if key not in outputs or getattr(grad, "shape", None) != outputs[key].shape:
                self._diagnose(params, inputs, output_gradients, outputs)
            if grad.dtype != outputs[key].dtype:
                raise DTypeMismatchError(
                    f"{owner}: output_gradients[{key!r}]: expected dtype {outputs[key].dtype} "
                    f"(the dtype of output {key!r}), got {grad.dtype}"
                )
        return {key: outputs[key] for key in output_gradients}

    def _explain(self, error: Exception, params: Any, inputs: Any, output_gradients: Any = None) -> None:
        """Raise the core's diagnosis of a failed call, if it finds one; else return to re-raise `error`."""
        if isinstance(error, MithrilError):
            return
        try:
            self._diagnose(params, inputs)
        except MithrilError as found:
            if type(found) is not MithrilError:
                raise found from None
        except TypeError as found:
            raise found from None
        outputs = jax.eval_shape(self._raw_forward, params, inputs)
        if output_gradients is not None:
            if not isinstance(output_gradients, Mapping):
                raise TypeError(f"{self.graph.model.describe()}: output_gradients must be a dict keyed by output name")
            for key, grad in output_gradients.items():
                if not self.backend.is_array(grad):
                    raise TypeError(
                        f"{self.graph.model.describe()}: output_gradients[{key!r}]: expected an array, "
                        f"got {type(grad).__name__}"
                    )
            self._select(params, inputs, outputs, output_gradients)
        if self.layout is not None:
            where = f"{self.graph.model.describe()} on mesh {dict(self.layout.mesh.shape)}"
            self.layout.check_call(inputs, where)
            self.layout.check_call(outputs, where)
