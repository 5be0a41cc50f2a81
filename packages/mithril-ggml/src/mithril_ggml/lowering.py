"""Lowering a typed graph to static ggml graphs: built once per input shape, run many times.

Memory is sized from the graph: contexts hold only tensor metadata (no_alloc), the
weights and host-written tensors get one exact-size backend buffer each, and the
intermediates are placed by ggml's graph allocator (gallocr), which reuses memory.
Weights live in a `_WeightStore` shared by every graph of the same parameter shapes;
they are converted (and quantized) once per params object, recognised by the identity
of its arrays. Mutating a parameter array in place is therefore not seen: pass new
arrays after changing weights (a new dict of the same arrays is the same weights).
A program is not safe to call from several threads at once.
"""

from __future__ import annotations

import ctypes
import math
import operator
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import ggml.ggml as G
import numpy as np

from mithril.backend import CompileOptions, Program
from mithril.codegen import PythonCodegen, function, static_shape
from mithril.errors import KeyNotFoundError, MithrilError, ShapeError, UnsupportedError
from mithril.graph import Edge, Graph, Node
from mithril.validation import make_diagnose

from . import quant
from .ops import GRAD_PROBLEMS, OPS, Builder, T, check_node, ne4, prefers_out_prod

if TYPE_CHECKING:
    from .backend import GGMLBackend

__all__ = ["GGMLProgram", "program_of", "quantization_report"]

_CPU = G.ggml_backend_cpu_init()  # also initialises ggml's CPU tables; kept for the process lifetime
_CPU_BUFT = G.ggml_backend_get_default_buffer_type(_CPU)
_OVERHEAD = G.ggml_tensor_overhead()
_CTYPES = {G.GGML_TYPE_F32: ctypes.c_float, G.GGML_TYPE_I32: ctypes.c_int32}
_PREPARED_CACHE = 2  # params objects whose converted weights are kept besides the loaded one
# ggml_graph_compute called through a plain function pointer on integer addresses: the
# typed ctypes wrapper spends a few hundred ns converting its pointer arguments.
_COMPUTE_ADDRESS = ctypes.cast(G.ggml_graph_compute, ctypes.c_void_p).value
assert _COMPUTE_ADDRESS is not None
_COMPUTE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(_COMPUTE_ADDRESS)


def _new_context(n_tensors: int, extra: int = 0) -> Any:
    params = G.ggml_init_params(mem_size=n_tensors * _OVERHEAD + extra, mem_buffer=None, no_alloc=True)
    ctx = G.ggml_init(params)
    if not ctx:
        raise MemoryError("ggml_init failed")
    return ctx


def _new_tensor(ctx: Any, shape: tuple[int, ...], kind: int) -> Any:
    return G.ggml_new_tensor(ctx, kind, 4, (ctypes.c_int64 * 4)(*ne4(shape)))


def _view(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A NumPy view of a contiguous, allocated F32 or I32 tensor."""
    ctype = _CTYPES[tensor.contents.type]
    n = G.ggml_nelements(tensor)
    return np.ctypeslib.as_array((ctype * n).from_address(tensor.contents.data)).reshape(shape)


def _mark_output(tensor: Any) -> None:
    """Flag a tensor, and the tensors it views, so gallocr never reuses their memory."""
    while tensor:
        G.ggml_set_output(tensor)
        tensor = tensor.contents.view_src


class _WeightStore:
    """Parameter tensors for one set of parameter shapes, in one exact-size buffer.

    Float32 linear weights whose shape favours ggml_out_prod (`prefers_out_prod`) also get a
    contiguous transposed copy, written with the weights, which gradient-free graphs use.
    """

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], mode: str | None) -> None:
        self.shapes = shapes
        self.types = quant.choose_types(graph, shapes, mode)
        transposable = [
            edge.name
            for edge in graph.params
            if self.types[edge.name][0] == G.GGML_TYPE_F32
            and len(shapes[edge.name]) == 2
            and {(node.primitive, key) for node, key in edge.consumers} == {("linear", "weight")}
            and prefers_out_prod(*shapes[edge.name])
        ]
        self.ctx = _new_context(len(shapes) + len(transposable) + 1)
        self.tensors = {name: _new_tensor(self.ctx, shape, self.types[name][0]) for name, shape in shapes.items()}
        self.transposed = {name: _new_tensor(self.ctx, shapes[name][::-1], G.GGML_TYPE_F32) for name in transposable}
        self.by_address = {ctypes.addressof(self.tensors[name].contents): t for name, t in self.transposed.items()}
        self.buffer = G.ggml_backend_alloc_ctx_tensors_from_buft(self.ctx, _CPU_BUFT) if shapes else None
        self.loaded: tuple[Any, ...] | None = None
        self.instances: dict[Any, _Instance] = {}

    def load(self, names: list[str], arrays: tuple[Any, ...], prepared: list[np.ndarray]) -> None:
        for name, data in zip(names, prepared):
            tensor = self.tensors[name]
            assert data.nbytes == G.ggml_nbytes(tensor), (name, data.nbytes, G.ggml_nbytes(tensor))
            ctypes.memmove(tensor.contents.data, data.ctypes.data, data.nbytes)
        for name, data in zip(self.transposed, prepared[len(names) :]):
            _view(self.transposed[name], data.shape)[...] = data
        self.loaded = arrays

    def __del__(self) -> None:
        if self.buffer:
            G.ggml_backend_buffer_free(self.buffer)
        G.ggml_free(self.ctx)


class _Instance:
    """One static ggml graph for fixed input shapes (and, for gradients, fixed seeded outputs)."""

    def __init__(
        self,
        program: GGMLProgram,
        store: _WeightStore,
        input_shapes: tuple[tuple[int, ...], ...],
        grad_keys: frozenset[str] | None,
        taps: tuple[Edge, ...] = (),
    ) -> None:
        graph = program.graph
        self.grad = grad_keys is not None
        budget = sum(48 + 8 * n.attrs.get("groups", 1) for n in graph.nodes) * (4 if self.grad else 1) + 64
        self.pctx = _new_context(4 * len(graph.edges) + 16)
        self.gctx = _new_context(budget, G.ggml_graph_overhead_custom(budget, self.grad))
        self._constants: list[tuple[Any, np.ndarray]] = []
        self.writers: list[tuple[int, Callable[[Any], tuple[np.ndarray, ...]], list[tuple[Any, Any]]]] = []
        self.buffer = self.galloc = None
        index = {e.name: i for i, e in enumerate(graph.inputs)}
        values: dict[Edge, T] = {}
        self.inputs: list[tuple[Any, int]] = []
        for edge, shape in zip(graph.inputs, input_shapes):
            if edge.kind == "int":
                values[edge] = T(None, shape)
                continue
            tensor = self._persistent(shape, G.GGML_TYPE_F32)
            values[edge] = T(tensor, shape)
            self.inputs.append((tensor, index[edge.name]))
        for edge in graph.params:
            values[edge] = T(store.tensors[edge.name], store.shapes[edge.name])

        def host_tensor(shape: Any, kind: Any, source: Any, constant: np.ndarray | None) -> Any:
            if constant is not None:
                tensor = self._persistent(constant.shape, G.GGML_TYPE_F32)
                self._constants.append((tensor, constant))
                return tensor
            edge, specs, convert = source
            tensors = [self._persistent(s, k) for s, k in specs]
            self.writers.append((-1 if edge is None else index[edge.name], convert, list(zip(tensors, specs))))
            return tensors

        builder = Builder(self.gctx, self.grad, host_tensor, program.backend._rng, store.by_address)
        for node in graph.nodes:
            args = {k: values[e] for k, e in node.inputs.items()}
            result = OPS[node.primitive](builder, node, args)
            results = {next(iter(node.outputs)): result} if isinstance(result, T) else result
            for key, edge in node.outputs.items():
                values[edge] = results[key]
                _check_shape(node, edge, results[key])
        outputs = {e.name: builder.cont(values[e]) for e in (*graph.outputs, *taps)}
        self.macs = sum(_macs(n, values) for n in graph.nodes)
        self.seeds: list[tuple[Any, str]] = []
        self.grads: list[tuple[str, Any, tuple[int, ...]]] = []
        if grad_keys is not None:
            wanted = program.params_reaching(grad_keys)
            for edge in graph.params:
                tensor = store.tensors[edge.name] if edge.name in wanted else None
                if tensor is not None:
                    G.ggml_set_param(tensor)
                self.grads.append((edge.name, tensor, store.shapes[edge.name]))
        self.graph = G.ggml_new_graph_custom(self.gctx, budget, self.grad)
        for out in outputs.values():
            _mark_output(out.tensor)
            G.ggml_build_forward_expand(self.graph, out.tensor)
        if grad_keys is not None and any(t is not None for _, t, _ in self.grads):
            self._backward(outputs, grad_keys)
        self._allocate()
        self.in_views = [(_view(t, values[graph.inputs[i]].shape), i) for t, i in self.inputs]
        self.host_views = [(i, convert, [_view(t, s) for t, (s, _) in ts]) for i, convert, ts in self.writers]
        self.out_views = [(name, _view(out.tensor, out.shape)) for name, out in outputs.items()]
        self.out_shapes = {name: out.shape for name, out in outputs.items()}
        self.seed_views = [(_view(t, self.out_shapes[k]), k) for t, k in self.seeds]
        self.grad_views = [(name, _view(t, shape) if t else None, shape) for name, t, shape in self.grads]
        self.n_threads = program.backend.threads_for(self.macs)
        # One thread: a threadpool of our own (it has no worker threads) saves ggml creating
        # and freeing one on every compute. More threads: ggml's per-call pool, whose workers
        # do not stay spinning between calls (a persistent pool's do, which hurts on busy cores).
        self.threadpool = None
        if self.n_threads == 1:
            tp_params = G.ggml_threadpool_params_default(1)
            self.threadpool = G.ggml_threadpool_new(ctypes.byref(tp_params))
        self.plan = G.ggml_graph_plan(self.graph, self.n_threads, self.threadpool)
        self.work = np.empty(max(self.plan.work_size, 1), np.uint8)
        self.plan.work_data = ctypes.cast(self.work.ctypes.data, ctypes.POINTER(ctypes.c_uint8))
        self.compute_args = (ctypes.cast(self.graph, ctypes.c_void_p).value, ctypes.addressof(self.plan))

    def _persistent(self, shape: tuple[int, ...], kind: int) -> Any:
        tensor = _new_tensor(self.pctx, shape, kind)
        G.ggml_set_input(tensor)
        return tensor

    def _backward(self, outputs: dict[str, T], grad_keys: frozenset[str]) -> None:
        """Append ggml's backward pass for loss = sum(output * seed) over the seeded outputs."""
        loss = None
        for key in sorted(grad_keys):
            out = outputs[key]
            seed = self._persistent(out.shape, G.GGML_TYPE_F32)
            self.seeds.append((seed, key))
            term = G.ggml_sum(self.gctx, G.ggml_mul(self.gctx, out.tensor, seed))
            loss = term if loss is None else G.ggml_add(self.gctx, loss, term)
        G.ggml_set_loss(loss)
        G.ggml_build_forward_expand(self.graph, loss)
        G.ggml_build_backward_expand(self.gctx, self.graph, None)
        grads = []
        for name, tensor, shape in self.grads:
            grad = G.ggml_graph_get_grad(self.graph, tensor) if tensor is not None else None
            if grad and not G.ggml_is_contiguous(grad):
                grad = G.ggml_cont(self.gctx, grad)
                G.ggml_build_forward_expand(self.graph, grad)
            if grad:
                _mark_output(grad)
            grads.append((name, grad or None, shape))
        self.grads = grads

    def _allocate(self) -> None:
        if G.ggml_get_first_tensor(self.pctx):
            self.buffer = G.ggml_backend_alloc_ctx_tensors_from_buft(self.pctx, _CPU_BUFT)
            if not self.buffer:
                raise MemoryError("ggml could not allocate the input buffer")
        for tensor, value in self._constants:
            _view(tensor, value.shape)[...] = value
        self.galloc = G.ggml_gallocr_new(_CPU_BUFT)
        if not G.ggml_gallocr_alloc_graph(self.galloc, self.graph):
            raise MemoryError("ggml's graph allocator failed")

    def run(self, xs: tuple[Any, ...], seeds: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        for view, i in self.in_views:
            view[...] = xs[i]
        for i, convert, views in self.host_views:
            for view, value in zip(views, convert(xs[i] if i >= 0 else None)):
                view[...] = value
        if seeds is not None:
            for view, key in self.seed_views:
                view[...] = seeds[key]
            G.ggml_graph_reset(self.graph)
        status = _COMPUTE(*self.compute_args)
        if status != G.GGML_STATUS_SUCCESS:
            _compute_failed(status)
        return {name: view.copy() for name, view in self.out_views}

    def gradients(self) -> dict[str, np.ndarray]:
        return {
            name: view.copy() if view is not None else np.zeros(shape, np.float32)
            for name, view, shape in self.grad_views
        }

    def __del__(self) -> None:
        if getattr(self, "threadpool", None):
            G.ggml_threadpool_free(self.threadpool)
        if self.galloc:
            G.ggml_gallocr_free(self.galloc)
        if self.buffer:
            G.ggml_backend_buffer_free(self.buffer)
        G.ggml_free(self.gctx)
        G.ggml_free(self.pctx)


def _compute_failed(status: int) -> None:
    raise MithrilError(f"ggml graph computation failed with status {status}")


def _check_shape(node: Node, edge: Edge, value: T) -> None:
    """The lowering's result must have the solver's shape, and its ggml tensor must agree."""
    shape = value.shape
    expected = static_shape(edge)
    if tuple(value.tensor.contents.ne) != ne4(shape) or (
        expected is not None
        and (len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape)))
    ):
        raise ShapeError(
            f"ggml lowering of {node.primitive!r} ({node.path!r}) produced shape {list(shape)} for "
            f"{edge.name!r}, expected {'an unknown shape' if expected is None else list(expected)}"
        )


def _macs(node: Node, values: dict[Edge, T]) -> int:
    """Multiply-accumulates of the matrix ops (used to pick the thread count)."""
    out = next(iter(node.outputs.values()))
    if node.primitive == "linear":
        return math.prod(values[out].shape) * values[node.inputs["weight"]].shape[1]
    if node.primitive == "matmul":
        return math.prod(values[out].shape) * values[node.inputs["right"]].shape[0]
    if node.primitive == "conv2d":
        return math.prod(values[out].shape) * math.prod(values[node.inputs["weight"]].shape[1:])
    return 0


class GGMLProgram(Program):
    """Runs a compiled model on ggml; see the module docstring for the caching rules."""

    def __init__(self, backend: GGMLBackend, graph: Graph, options: CompileOptions) -> None:
        for node in graph.nodes:
            check_node(node)
        self.backend = backend
        self.graph = graph
        self.options = options
        self.param_names = [e.name for e in graph.params]
        self._stores: dict[tuple[tuple[int, ...], ...], _WeightStore] = {}
        self._last_store: _WeightStore | None = None
        self._prepared: OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], list[np.ndarray]]] = OrderedDict()
        self.grad_problem = None if options.inference else self._find_grad_problem()
        self._report: dict[str, str] | None = None
        self.calibration: dict[str, np.ndarray] = {}
        self._calibration_rows: dict[str, int] = {}
        static = self._build_static()
        gen = PythonCodegen(graph, backend, OPS, {})  # type: ignore[arg-type]
        self.diagnose = make_diagnose(graph, backend)
        load = gen.load_lines(gen.constant(self.diagnose, "diagnose"))
        inputs = "".join(f"{gen.names[e]}, " for e in graph.inputs)
        params = "".join(f"{gen.names[e]}, " for e in graph.params)
        self.source = function("check", "params, inputs", [*load, f"return ({inputs}), ({params})"])
        if static is not None:
            self.source += "\n" + self._static_forward(gen, load, *static)
        # Popped: a function left in its own globals would be a reference cycle holding the weights.
        namespace = gen.build(self.source, options.file_path)
        self._check = namespace.pop("check")
        if static is not None:
            self.forward = namespace.pop("forward")  # type: ignore[method-assign]

    # -- compile-time work -----------------------------------------------------------
    def _find_grad_problem(self) -> str | None:
        owner = self.graph.model.describe()
        if self.backend.quantize is not None:
            return (
                f"{owner}: gradients need float32 weights, but the backend quantizes them "
                f"(GGMLBackend(quantize={self.backend.quantize!r})); compile with GGMLBackend() to train"
            )
        needs = {e for e in self.graph.params if e.kind != "int"}
        for node in self.graph.nodes:
            if any(e in needs for e in node.inputs.values()):
                problem = GRAD_PROBLEMS.get(node.primitive)
                if problem is not None and problem.test(node):
                    return (
                        f"{owner}: backend 'ggml' cannot compute gradients through {node.primitive!r} "
                        f"(used by {node.path!r}): {problem.reason}"
                    )
                needs.update(e for e in node.outputs.values() if e.kind == "float")
        return None

    def _build_static(self) -> tuple[_WeightStore, _Instance] | None:
        """With every shape known at compile time, build the forward graph now."""
        inputs = [static_shape(e) for e in self.graph.inputs]
        params = [static_shape(e) for e in self.graph.params]
        if not all(s is not None and None not in s for s in [*inputs, *params]):
            return None
        store = self._store(tuple(params))  # type: ignore[arg-type]
        key = tuple(inputs)
        inst = store.instances[key] = _Instance(self, store, key, None)  # type: ignore[arg-type]
        return store, inst

    def _static_forward(self, gen: PythonCodegen, load: list[str], store: _WeightStore, inst: _Instance) -> str:
        """Source of `forward` for fully static shapes: the check (which then guarantees the
        shapes) with the single instance's weight test, copies and compute inlined."""
        names = [gen.names[e] for e in self.graph.inputs]
        params = [gen.names[e] for e in self.graph.params]
        stale = "".join(f" or {p} is not loaded[{i}]" for i, p in enumerate(params))
        # A weak reference: the function is an attribute of this program, and a cycle would keep
        # the ggml buffers alive until the next garbage collection instead of freeing them with it.
        weights = gen.constant(weakref.WeakMethod(self._weights), "weights")
        lines = [
            *load,
            f"loaded = {gen.constant(store, 'store')}.loaded",
            f"if loaded is None{stale}:",
            f"    {weights}()(params, ({''.join(f'{p}, ' for p in params)}))",
        ]
        lines += [f"{gen.constant(view, 'x')}[...] = {names[i]}" for view, i in inst.in_views]
        for i, convert, views in inst.host_views:
            source = "None" if i < 0 else names[i]
            lines.append(f"for view, value in zip({gen.constant(views, 'h')}, {gen.constant(convert, 'c')}({source})):")
            lines.append("    view[...] = value")
        graph, plan = inst.compute_args
        lines += [
            f"status = {gen.constant(_COMPUTE, 'compute')}({graph}, {plan})",
            f"if status != {G.GGML_STATUS_SUCCESS}:",
            f"    {gen.constant(_compute_failed, 'failed')}(status)",
        ]
        outputs = ", ".join(f"{name!r}: {gen.constant(view, 'y')}.copy()" for name, view in inst.out_views)
        return function("forward", "params, inputs", [*lines, f"return {{{outputs}}}"])

    def params_reaching(self, grad_keys: frozenset[str]) -> set[str]:
        """Float parameters that the outputs in `grad_keys` depend on."""
        needed = {e for e in self.graph.outputs if e.name in grad_keys}
        for node in reversed(self.graph.nodes):
            if any(e in needed for e in node.outputs.values()):
                needed.update(node.inputs.values())
        return {e.name for e in self.graph.params if e in needed and e.kind == "float"}

    # -- weights ---------------------------------------------------------------------
    def _store(self, shapes: tuple[tuple[int, ...], ...]) -> _WeightStore:
        store = self._stores.get(shapes)
        if store is None:
            store = _WeightStore(self.graph, dict(zip(self.param_names, shapes)), self.backend.quantize)
            self._stores[shapes] = store
            self._report = {name: note for name, (_, note) in store.types.items()}
        return store

    def _weights(self, params: Mapping[str, Any], ps: tuple[Any, ...]) -> _WeightStore:
        store = self._last_store
        if store is not None:  # the same arrays as last call: skip the shape key and the lookup
            loaded = store.loaded
            if loaded is not None and len(loaded) == len(ps) and all(map(operator.is_, loaded, ps)):
                return store
        store = self._last_store = self._store(tuple(tuple(p.shape) for p in ps))
        loaded = store.loaded
        if loaded is not None and len(loaded) == len(ps) and all(a is b for a, b in zip(loaded, ps)):
            return store
        key = tuple(id(p) for p in ps)
        cached = self._prepared.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], ps)):
            prepared = cached[1]
        else:
            prepared = self._convert(params, ps, store)
            self._prepared[key] = (ps, prepared)
            while len(self._prepared) > _PREPARED_CACHE:
                self._prepared.popitem(last=False)
        store.load(self.param_names, ps, prepared)
        return store

    def _convert(self, params: Mapping[str, Any], ps: tuple[Any, ...], store: _WeightStore) -> list[np.ndarray]:
        stored = getattr(params, "stored", {})
        out = []
        for name, array in zip(self.param_names, ps):
            kind = store.types[name][0]
            hit = stored.get(name)
            if hit is not None and hit[0] == kind and hit[1] is array:
                out.append(hit[2])
            else:
                out.append(quant.prepare(array, kind, self.calibration.get(name)))
        by_name = dict(zip(self.param_names, out))
        out.extend(np.ascontiguousarray(by_name[name].T) for name in store.transposed)
        return out

    def calibrate(self, hessians: dict[str, np.ndarray], rows: dict[str, int]) -> None:
        """Quantize weights with GPTQ on these input Gram matrices, from `rows` samples each, from now on."""
        self.calibration = hessians
        self._calibration_rows = rows
        self._prepared.clear()
        for store in self._stores.values():
            store.loaded = None
        self._last_store = None

    def activations(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], taps: tuple[Edge, ...]
    ) -> dict[str, Any]:
        """Outputs and the values of the `taps` edges, from a graph built once per input shapes and taps."""
        xs, ps = self._check(params, inputs)
        store = self._weights(params, ps)
        key = (tuple(tuple(x.shape) for x in xs), taps)
        inst = store.instances.get(key)
        if inst is None:
            inst = store.instances[key] = _Instance(self, store, key[0], None, taps)
        return inst.run(xs)

    @property
    def quantization_report(self) -> dict[str, str]:
        """Storage type of every parameter, with the reason when a weight stays float32 and how
        calibrated weights were rounded."""
        if self._report is None:
            raise ShapeError(
                f"{self.graph.model.describe()}: parameter shapes are not known yet; give shapes= to ml.compile "
                "or evaluate the model once"
            )
        rows = self._calibration_rows
        return {k: f"{v} (GPTQ on {rows[k]} calibration rows)" if k in rows else v for k, v in self._report.items()}

    # -- running ---------------------------------------------------------------------
    def _instance(self, store: _WeightStore, xs: tuple[Any, ...], grad_keys: frozenset[str] | None) -> _Instance:
        shapes = tuple(tuple(x.shape) for x in xs)
        key: Any = shapes if grad_keys is None else (shapes, grad_keys)
        inst = store.instances.get(key)
        if inst is None:
            inst = store.instances[key] = _Instance(self, store, shapes, grad_keys)
        return inst

    def forward(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        xs, ps = self._check(params, inputs)
        store = self._weights(params, ps)
        return self._instance(store, xs, None).run(xs)

    def forward_backward(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.grad_problem is not None:
            raise UnsupportedError(self.grad_problem)
        xs, ps = self._check(params, inputs)
        names = {e.name for e in self.graph.outputs}
        if not isinstance(output_gradients, Mapping) or not output_gradients or set(output_gradients) - names:
            given = sorted(map(str, output_gradients)) if isinstance(output_gradients, Mapping) else output_gradients
            raise KeyNotFoundError(
                f"{self.graph.model.describe()}: output_gradients keys {given} must be a non-empty subset of "
                f"the outputs {sorted(names)}"
            )
        store = self._weights(params, ps)
        inst = self._instance(store, xs, frozenset(output_gradients))
        for key, grad in output_gradients.items():
            if not isinstance(grad, np.ndarray) or grad.shape != inst.out_shapes[key]:
                outs = {k: np.empty(s, np.float32) for k, s in inst.out_shapes.items()}
                self.diagnose(params, inputs, output_gradients, outs)
        outputs = inst.run(xs, output_gradients)
        return outputs, inst.gradients()


def program_of(compiled: Any, caller: str) -> GGMLProgram:
    """The GGML program of a compiled model, or a TypeError naming `caller`."""
    program = getattr(compiled, "program", None)
    if not isinstance(program, GGMLProgram):
        raise TypeError(f"{caller} needs a model compiled for the GGML backend, got {compiled!r}")
    return program


def quantization_report(compiled: Any) -> dict[str, str]:
    """Storage type of each parameter of a model compiled for ggml (see `GGMLProgram`)."""
    return program_of(compiled, "quantization_report").quantization_report
