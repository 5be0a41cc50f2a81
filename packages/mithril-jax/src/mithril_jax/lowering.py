"""Lowering a typed graph to generated jnp code, differentiated by jax.vjp and jitted once.

The generated `forward` checks its arguments like every Python backend's; under jit those
checks run while tracing, so they cost nothing per call. What jax.jit compiles are flat
wrappers around it: `jit_forward` takes every param and input array positionally (graph
order) and returns a tuple of the outputs, and `jit_forward_backward` also takes the
output gradients and returns the outputs followed by one gradient per param; jax flattens
and rebuilds no dicts per call. The per-call functions `call_forward` and
`call_forward_backward` check the keys with one tuple comparison each (a caller's dict in
graph order is the fast path), pass the arrays on and build the result dicts once, with
gradients in the caller's key order. Any other call (keys in another order, gradients for
a subset of the outputs, wrong keys) takes the slower `_call_by_key`; a subset gets its
own jitted function, built once. State-update outputs (running statistics) ride along
undifferentiated. A call that fails before or while tracing is re-diagnosed by the core so
the user sees which key is wrong. Index range checks (Embedding rows, class targets) read
values, which a tracer has not got, so `check_indices` runs them before the jitted call.

Models with random primitives (declared `random`: dropout's mask) get one more argument,
a PRNG key that the backend splits off its own key for every call (so `set_seed` makes
runs repeatable, and successive calls draw fresh masks without retracing); each random
node folds its own stream index into it. Off a mesh, the jitted functions take the backend's key itself,
split it inside the call and return the backend's next key as their last output: the same
keys as `JaxBackend.next_key`, without a second jitted dispatch per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import jax

from mithril.backend import CompileOptions, FusedStep, Program, StepUpdate
from mithril.codegen import PythonCodegen, function
from mithril.dtypes import float32
from mithril.errors import KeyNotFoundError, MithrilError, NoFaultFound
from mithril.graph import Graph
from mithril.primitives import get as declaration
from mithril.validation import make_diagnose

from . import ops
from .sharding import Layout, with_deadline

if TYPE_CHECKING:
    from .backend import JaxBackend, JaxCompileOptions

__all__ = ["JaxProgram"]


def _split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(backend's next key, key for this call): the split `JaxBackend.next_key` makes, traced into the call."""
    new, use = jax.random.split(key)
    return new, use


def _dict(keys: Sequence[str], values: Sequence[str]) -> str:
    """Source of a dict display {key: value, ...}."""
    return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(keys, values)) + "}"


class JaxProgram(Program):
    """Generated `forward` and `forward_backward`, jitted (and placed on a mesh) as compiled."""

    def __init__(self, backend: JaxBackend, graph: Graph, options: CompileOptions) -> None:
        self.graph = graph
        self.options = options
        self.backend = backend
        shardings = cast("JaxCompileOptions", options.backend).shardings
        if shardings is not None and backend.mesh is None:
            raise ValueError(
                "ml.compile: shardings= needs a backend with a device mesh, e.g. JaxBackend(device_mesh=(8,))"
            )
        self.layout = None if backend.mesh is None else Layout(backend.mesh, graph, shardings or {})
        # placing arrays on a mesh across processes is a collective: bounded by collective_timeout like a call
        self._put = self._bounded(jax.device_put)
        random = [n for n in graph.nodes if declaration(n.primitive).random]
        self.random = bool(random)
        # off a mesh, the backend's key goes in and its successor comes out of each jitted call
        self._carries_key = self.random and self.layout is None
        self._param_keys = tuple(e.name for e in graph.params)
        self._input_keys = tuple(e.name for e in graph.inputs)
        self._output_keys = tuple(e.name for e in graph.outputs)
        self._outputs_known = frozenset(self._output_keys)
        # the gradients a call usually gives: every output but the state updates
        self._differentiable = tuple(e.name for e in graph.outputs if e.updates is None)
        # the keys whose arrays must have the backend's float dtype (index inputs are integers)
        self._float_keys = frozenset(e.name for e in [*graph.params, *graph.inputs] if e.kind == "float")
        self._float_outputs = frozenset(e.name for e in graph.outputs if e.kind == "float")
        self._array_type = type(backend.zeros(0))
        namespace = {
            **ops.NAMESPACE,
            "_vjp": jax.vjp,
            "_select": self._select,
            ops.RNG_STREAMS: {n.path: i for i, n in enumerate(random)},
            ops.FLOAT_DTYPE: backend.native_dtype(backend.dtype),
            "_split_key": _split_key,
        }
        self.gen = PythonCodegen(graph, backend, backend.op_table(), namespace)
        self._diagnose = make_diagnose(graph, backend)
        diagnose = self.gen.constant(self._diagnose, "diagnose")
        self._key_arg = f", {ops.RNG_KEY}" if self.random else ""
        body = [
            *self.gen.load_lines(diagnose, index_checks=False),
            *self._with_precision(self.gen.forward_lines()),
            f"return {self.gen.outputs_expr()}",
        ]
        traced = [function("forward", f"params, inputs{self._key_arg}", body), self._jit_forward_source()]
        if graph.index_checks:
            traced.append(self._check_indices_source())
        if not options.inference:
            traced.append(self._jit_forward_backward_source(self._differentiable))
        jitted = {"forward": self.gen.constant(None, "jit_forward")}
        if not options.inference:
            jitted["forward_backward"] = self.gen.constant(None, "jit_forward_backward")
        self.source = "\n\n".join([*traced, self._call_sources(jitted)])
        built = self.gen.build(self.source, options.file_path)
        self.gen.namespace["forward"] = self._raw_forward = built["forward"]
        self._jit_forward = built[jitted["forward"]] = self._compiled(built["jit_forward"], ())
        self.forward: Callable[..., Any] = built["call_forward"]
        self._check_indices: Callable[[Any], None] | None = built.get("check_indices")
        self._jit_forward_backward: dict[tuple[str, ...], Callable[..., Any]] = {}
        if not options.inference:
            fb = self._compiled(built["jit_forward_backward"], self._param_keys)
            self._jit_forward_backward[self._differentiable] = built[jitted["forward_backward"]] = fb
            self.forward_backward = built["call_forward_backward"]

    # -- generated source --------------------------------------------------------------
    def _with_precision(self, lines: list[str]) -> list[str]:
        """The ops under `jax.default_matmul_precision` (read while tracing: each dot and convolution,
        and its transpose in the backward pass, carries the precision), unless it is "default".

        Only float32 programs: the option chooses between float32 and reduced-precision kernels, and
        XLA's CPU dots refuse a HIGHEST precision for float16 operands."""
        precision = cast("JaxCompileOptions", self.options.backend).precision
        if precision == "default" or not lines or self.backend.dtype is not float32:
            return lines
        context = self.gen.constant(jax.default_matmul_precision, "matmul_precision")
        return [f"with {context}({precision!r}):", *(f"    {line}" for line in lines)]

    def _arrays(self, prefix: str = "a") -> list[str]:
        return [f"{prefix}{i}" for i in range(len(self._param_keys) + len(self._input_keys))]

    def _jit_key(self) -> tuple[str, list[str], str]:
        """(last parameter, first lines, last returned values) of a jitted function for the PRNG key."""
        if not self._carries_key:
            return self._key_arg, [], ""
        return ", _backend_key", [f"_backend_key, {ops.RNG_KEY} = _split_key(_backend_key)"], "_backend_key, "

    def _jit_forward_source(self) -> str:
        """`jit_forward(*params, *inputs)`: `forward` on dicts rebuilt while tracing, the outputs as a tuple."""
        arrays, n = self._arrays(), len(self._param_keys)
        params, inputs = _dict(self._param_keys, arrays[:n]), _dict(self._input_keys, arrays[n:])
        outputs = "".join(f"outputs[{k!r}], " for k in self._output_keys)
        key, split, new_key = self._jit_key()
        return function(
            "jit_forward",
            ", ".join(arrays) + key,
            [*split, f"outputs = forward({params}, {inputs}{self._key_arg})", f"return ({outputs}{new_key})"],
        )

    def _jit_forward_backward_source(self, selected: Sequence[str]) -> str:
        """`jit_forward_backward(*params, *inputs, *gradients of selected)`: outputs, then one gradient per param."""
        arrays, n = self._arrays(), len(self._param_keys)
        grads = [f"g{i}" for i in range(len(selected))]
        returned = [f"outputs[{k!r}]" for k in self._output_keys] + [f"gradients[{k!r}]" for k in self._param_keys]
        key, split, new_key = self._jit_key()
        return function(
            "jit_forward_backward",
            ", ".join(arrays + grads) + key,
            [
                *split,
                f"inputs = {_dict(self._input_keys, arrays[n:])}",
                f"output_gradients = {_dict(selected, grads)}",
                "def differentiated(params):",
                f"    outputs = forward(params, inputs{self._key_arg})",
                "    return _select(params, inputs, outputs, output_gradients), outputs",
                f"selected, pullback, outputs = _vjp(differentiated, {_dict(self._param_keys, arrays[:n])}, "
                "has_aux=True)",
                "(gradients,) = pullback(output_gradients)",
                f"return ({''.join(r + ', ' for r in returned)}{new_key})",
            ],
        )

    def _check_indices_source(self) -> str:
        """`check_indices(inputs)`: the index range checks, which read values, so they run before (outside) jit."""
        checked = {spec.key for spec in self.graph.index_checks}
        loads = [f"{self.gen.names[e]} = inputs[{e.name!r}]" for e in self.graph.inputs if e.name in checked]
        return function("check_indices", "inputs", [*loads, *self.gen.index_check_lines()])

    def _call_sources(self, jitted: Mapping[str, str]) -> str:
        """`call_forward` and `call_forward_backward`, the functions evaluate calls; `jitted` names the jitted ones.

        The fast path's check is a few lengths and, for gradients keyed like params, the params' key order;
        the arrays are looked up by key (a wrong key raises and is diagnosed) and passed positionally.
        """
        gen = self.gen
        gen.namespace.update(_explain=self._explain, _call_by_key=self._call_by_key, _put=self._put)
        if self.random:
            gen.namespace.update(_next_key=self.backend.next_key, _backend=self.backend)
        pk, ik, dk = self._param_keys, self._input_keys, self._differentiable
        n_out = len(self._output_keys)
        float_dtype = gen.constant(self.backend.native_dtype(self.backend.dtype), "float_dtype")
        array_type = gen.constant(self._array_type, "array_type")
        sources = []
        for name, call in jitted.items():
            gradients = name == "forward_backward"
            loads = [(f"a{i}", f"params[{k!r}]") for i, k in enumerate(pk)]
            loads += [(f"a{len(pk) + i}", f"inputs[{k!r}]") for i, k in enumerate(ik)]
            floats = [f"a{i}" for i, k in enumerate((*pk, *ik)) if k in self._float_keys]
            if gradients:
                loads += [(f"g{i}", f"output_gradients[{k!r}]") for i, k in enumerate(dk)]
                floats += [f"g{i}" for i, k in enumerate(dk) if k in self._float_outputs]
                extra = ", output_gradients"
                check = f"len(inputs) == {len(ik)} and len(output_gradients) == {len(dk)}"
                check += "".join(f" and {k!r} in output_gradients" for k in dk)
                check += f" and tuple(params) == {gen.constant(pk, 'param_keys')}"
            else:
                extra, check = "", f"len(params) == {len(pk)} and len(inputs) == {len(ik)}"
            # jit converts NumPy float64 arrays to float32 when x64 is off, so their dtype is
            # tested before the call; a jax array's dtype is part of jit's cache key and is checked
            # while tracing, so for those the type test alone suffices (cheaper than reading .dtype).
            dtypes = " and ".join(f"(type({a}) is {array_type} or {a}.dtype is {float_dtype})" for a in floats)
            args = [a for a, _ in loads]
            if self.layout is None:
                passed = ", ".join(args)
            else:
                shardings = gen.constant(self._in_shardings(dk if gradients else None), "shardings")
                passed = f"*_put(({', '.join(args)},), {shardings})"
            results = [f"r{i}" for i in range(n_out + (len(pk) if gradients else 0))]
            targets = "".join(r + ", " for r in results)
            run = f"({targets}) = {call}({passed})"
            if self._carries_key:
                run = f"({targets}_backend._key, ) = {call}({passed}, _backend._key)"
            elif self.random:
                run = f"({targets}) = {call}({passed}, _next_key())"
            returned = _dict(self._output_keys, results[:n_out])
            if gradients:
                returned += ", " + _dict(pk, results[n_out:])
            checks = ["        check_indices(inputs)"] if self.graph.index_checks else []
            calling = [f"with {gen.constant(self.backend.key_lock, 'key_lock')}:", f"    {run}"]
            body = [
                "try:",
                f"    if {check}:",
                *(f"        {a} = {value}" for a, value in loads),
                *checks,
                f"        if {dtypes or 'True'}:",
                *(f"            {line}" for line in (calling if self._carries_key else [run])),
                f"            return {returned}",
                "except Exception as error:",
                f"    _explain(error, params, inputs{extra})",
                "    raise",
                f"return _call_by_key(params, inputs{extra})",
            ]
            sources.append(function(f"call_{name}", f"params, inputs{extra}", body))
        return "\n\n".join(sources)

    # -- compilation -----------------------------------------------------------------
    def _in_shardings(self, selected: Sequence[str] | None) -> tuple[Any, ...]:
        """The sharding of each positional array of a call (params, inputs, then the gradients of `selected`)."""
        assert self.layout is not None
        layout = self.layout
        out = [layout.params[k] for k in self._param_keys] + [layout.inputs[k] for k in self._input_keys]
        return tuple(out + [layout.outputs[k] for k in selected or ()])

    def _compiled(self, fn: Callable[..., Any], gradients: Sequence[str]) -> Callable[..., Any]:
        """`fn` under jax.jit when jit is on; on a mesh, its outputs (then gradients) pinned to their shardings."""
        if not self.options.jit:
            return self._bounded(fn)
        if self.layout is None:
            return jax.jit(fn)
        layout = self.layout
        outs = tuple(layout.outputs[k] for k in self._output_keys) + tuple(layout.params[k] for k in gradients)
        return self._bounded(jax.jit(fn, out_shardings=outs))

    def _bounded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` awaited within the backend's collective_timeout on a mesh across processes; else `fn` itself."""
        seconds = self.backend.collective_timeout
        if self.layout is None or seconds is None or jax.process_count() == 1:
            return fn
        return with_deadline(fn, seconds, f"{self.graph.model.describe()} on mesh {dict(self.layout.mesh.shape)}")

    def _forward_backward_for(self, selected: tuple[str, ...]) -> Callable[..., Any]:
        """The jitted forward_backward for gradients of the outputs `selected` (graph order), built once."""
        fn = self._jit_forward_backward.get(selected)
        if fn is None:
            built = self.gen.build(self._jit_forward_backward_source(selected))
            fn = self._jit_forward_backward[selected] = self._compiled(built["jit_forward_backward"], self._param_keys)
        return fn

    def fused_step(self, seeds: Mapping[str, float], update: StepUpdate) -> FusedStep | None:
        """Forward, backward and `update` in one jax.jit: gradients of the `seeds`-weighted losses by jax.grad.

        On a device mesh, params and inputs are placed by their keys' shardings before the call
        and XLA all-reduces the gradients inside it (one step, one program, every process alike).
        Index checks and a PRNG key for random models are prepared before the jitted call, like
        `forward`'s.
        """
        raw, weights = self._raw_forward, dict(seeds)
        layout = self.layout

        def step(params: Any, inputs: Any, opt_state: Any, t: Any, lr: Any, *key: Any) -> tuple[Any, Any, Any]:
            def loss(params: Any) -> tuple[Any, Any]:
                outputs = raw(params, inputs, *key)
                terms = [outputs[k] if w == 1.0 else w * outputs[k] for k, w in weights.items()]
                return sum(terms[1:], terms[0]), outputs

            (_, outputs), grads = jax.value_and_grad(loss, has_aux=True)(params)
            new_params, new_opt_state = update(params, grads, opt_state, t, lr)
            return new_params, new_opt_state, outputs

        jitted = jax.jit(step) if self.options.jit else step
        check, random, backend = self._check_indices, self.random, self.backend
        # Without a PRNG key to give back, the index check can run while XLA computes the step: the step is
        # functional (nothing donated), so a bad index drops its result and every state stays as it was.
        check_first, check_after = (check, None) if random else (None, check)

        def place_and_step(params: Any, inputs: Any, *rest: Any) -> tuple[Any, Any, Any]:
            if layout is not None:
                params, inputs = self.place_params(params), self._place_inputs(inputs)
            return cast(tuple[Any, Any, Any], jitted(params, inputs, *rest))

        placed_step = self._bounded(place_and_step)  # placing arrays across processes is a collective too

        def call(params: Any, inputs: Any, opt_state: Any, t: Any, lr: Any) -> tuple[Any, Any, Any]:
            if check_first is not None:
                check_first(inputs)
            given = inputs
            try:
                result = placed_step(params, inputs, opt_state, t, lr, *((backend.next_key(),) if random else ()))
            except Exception as error:
                self._explain(error, params, inputs)
                raise
            if check_after is not None:
                check_after(given)
            return result

        return call

    def place_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """On a device mesh, `params` placed by their keys' shardings (replicated or split); else as given."""
        if self.layout is None:
            return params
        shardings = self.layout.params
        return dict(self.layout.put({k: v for k, v in params.items() if k in shardings}, shardings)) | {
            k: v for k, v in params.items() if k not in shardings
        }

    def _place_inputs(self, inputs: Any) -> Any:
        """A call's inputs placed by their keys' shardings (the batch split over the first mesh axis)."""
        assert self.layout is not None
        layout = self.layout
        where = f"{self.graph.model.describe()} on mesh {dict(layout.mesh.shape)}"
        layout.check_call(inputs, where)
        known = {k: v for k, v in inputs.items() if k in layout.inputs}
        return {**inputs, **layout.put(known, layout.inputs)}

    # -- calls the fast path does not take ---------------------------------------------
    def _call_by_key(self, params: Any, inputs: Any, output_gradients: Any = None) -> Any:
        """A call whose keys differ from graph order: looked up one by one, or diagnosed when wrong."""
        pk, ik = self._param_keys, self._input_keys
        if not (
            isinstance(params, Mapping)
            and isinstance(inputs, Mapping)
            and len(params) == len(pk)
            and len(inputs) == len(ik)
            and all(k in params for k in pk)
            and all(k in inputs for k in ik)
        ):
            self._diagnose(params, inputs)
        if self._check_indices is not None:
            self._check_indices(inputs)
        self._check_float_dtypes(params, inputs, output_gradients)
        arrays = [params[k] for k in pk] + [inputs[k] for k in ik]
        if output_gradients is None:
            fn, selected = self._jit_forward, None
        else:
            selected = self._selected_keys(params, inputs, output_gradients)
            fn = self._forward_backward_for(selected)
            arrays += [output_gradients[k] for k in selected]
        try:
            if self.layout is not None:
                arrays = list(self._put(tuple(arrays), self._in_shardings(selected)))
            if self._carries_key:
                with self.backend.key_lock:
                    *r, self.backend._key = fn(*arrays, self.backend._key)
            else:
                r = fn(*arrays, *((self.backend.next_key(),) if self.random else ()))
        except Exception as error:
            self._explain(error, params, inputs, output_gradients)
            raise
        outputs = dict(zip(self._output_keys, r))
        if output_gradients is None:
            return outputs
        gradients = dict(zip(pk, r[len(outputs) :]))
        return outputs, {k: gradients[k] for k in params}

    def _selected_keys(self, params: Any, inputs: Any, output_gradients: Any) -> tuple[str, ...]:
        """The outputs `output_gradients` differentiate, in graph order, after checking its keys."""
        self._check_gradient_keys(output_gradients, self._output_keys)
        if any(k not in self._outputs_known for k in output_gradients):
            extra = (self.backend.next_key(),) if self.random else ()
            self._select(params, inputs, jax.eval_shape(self._raw_forward, params, inputs, *extra), output_gradients)
        return tuple(k for k in self._output_keys if k in output_gradients)

    # -- checks ------------------------------------------------------------------------
    def _output_shapes(self, params: Any, inputs: Any) -> dict[str, Any]:
        """The outputs' shapes and dtypes for these arguments, traced without running (a fixed key for dropout)."""
        extra = (jax.random.key(0),) if self.random else ()
        return cast("dict[str, Any]", jax.eval_shape(self._raw_forward, params, inputs, *extra))

    def _check_float_dtypes(self, params: Any, inputs: Any, output_gradients: Any) -> None:
        """Diagnose a float array of another dtype before jit would silently convert it (NumPy float64, x64 off)."""
        backend, want = self.backend, self.backend.dtype
        given = [*((k, params[k]) for k in self._param_keys), *((k, inputs[k]) for k in self._input_keys)]
        if any(k in self._float_keys and backend.dtype_of(v) is not want for k, v in given):
            self._diagnose(params, inputs)
        if isinstance(output_gradients, Mapping):
            for key, grad in output_gradients.items():
                if key in self._float_outputs and backend.is_array(grad) and backend.dtype_of(grad) is not want:
                    self._diagnose(params, inputs, output_gradients, self._output_shapes(params, inputs))

    def _check_gradient_keys(self, output_gradients: Any, outputs: Any) -> None:
        if not isinstance(output_gradients, Mapping) or not output_gradients:
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: output_gradients must be a non-empty dict keyed by output name; "
                f"outputs are {list(outputs)}"
            )

    def _select(self, params: Any, inputs: Any, outputs: dict[str, Any], output_gradients: Any) -> dict[str, Any]:
        """The outputs that `output_gradients` differentiate, after checking its keys, shapes and dtypes."""
        self._check_gradient_keys(output_gradients, outputs)
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
