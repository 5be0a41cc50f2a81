"""Lowering a typed graph to static ggml graphs: built once per input shape, run many times.

Memory is sized from the graph: contexts hold only tensor metadata (no_alloc), the
weights and host-written tensors get one exact-size backend buffer each, and the
intermediates are placed by ggml's graph allocator (gallocr), which reuses memory.
Weights live in a `_WeightStore` shared by every graph of the same parameter shapes;
float32 weights are read in place from the caller's arrays; converted ones (quantized,
transposed, non-contiguous) are converted once per params object, recognised by the identity
of its arrays, and again when a snapshot comparison finds their source written in place.
Gradients come from the core's joint forward+backward graph (`mithril.primitives.joint_graph`),
lowered like any forward graph: inputs and output gradients in, outputs and parameter
gradients out. A program runs one call at a time (a lock per program), so threads may share it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import ggml.ggml as G
import numpy as np

from mithril.backend import CompileOptions, Program
from mithril.codegen import PythonCodegen, function, static_shape
from mithril.derived import DerivedValues
from mithril.errors import KeyNotFoundError, MithrilError, ShapeError, UnsupportedError
from mithril.graph import Edge, Graph, Node
from mithril.primitives import get, joint_graph
from mithril.validation import make_diagnose

from . import quant
from .ops import OPS, Builder, T, check_node, ne4, node_budget, prefers_out_prod

if TYPE_CHECKING:
    from .backend import GGMLBackend

__all__ = ["FrozenArray", "GGMLProgram", "is_frozen", "program_of", "quantization_report"]

_CPU = G.ggml_backend_cpu_init()  # also initialises ggml's CPU tables; kept for the process lifetime
_CPU_BUFT = G.ggml_backend_get_default_buffer_type(_CPU)
_OVERHEAD = G.ggml_tensor_overhead()
_CTYPES = {G.GGML_TYPE_F32: ctypes.c_float, G.GGML_TYPE_I32: ctypes.c_int32}
_PREPARED_CACHE = 2  # params objects whose converted weights are kept besides the loaded one
_SNAPSHOT_BYTES = 1 << 16  # sources up to this size are snapshot as bytes, larger ones as arrays
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


# Inputs this large are read where the caller's array lies instead of copied in (a generation step's
# key/value caches, 7 MB a token for GPT-2 small); for small ones the copy costs less than moving pointers.
IN_PLACE_INPUT_BYTES = 1 << 16
_VIEW_OPS = frozenset((G.GGML_OP_VIEW, G.GGML_OP_RESHAPE, G.GGML_OP_PERMUTE, G.GGML_OP_TRANSPOSE))


def _readable_in_place(graph: Any, inputs: list[Any]) -> list[_MovedInput | None]:
    """For each input tensor, what to move to read a caller's array in place: None for a small input, or when a
    node of `graph` writes into the input's memory (anything but a pure view of it)."""
    roots = {ctypes.addressof(t.contents): i for i, t in enumerate(inputs)}
    views: list[list[tuple[Any, int]] | None] = [
        [(t, 0)] if G.ggml_nbytes(t) >= IN_PLACE_INPUT_BYTES else None for t in inputs
    ]
    for n in range(G.ggml_graph_n_nodes(graph)):
        node = G.ggml_graph_node(graph, n)
        source = node.contents.view_src
        i = roots.get(ctypes.addressof(source.contents)) if source else None
        found = None if i is None else views[i]
        if found is None:
            continue
        if node.contents.op in _VIEW_OPS:
            found.append((node, node.contents.view_offs))
        else:
            views[i] = None  # type: ignore[index]
    return [None if v is None else _MovedInput(t.contents.data, v) for t, v in zip(inputs, views)]


class _MovedInput:
    """An input tensor ggml only reads, and its graph views: pointed at the caller's array, or at its own memory."""

    __slots__ = ("own", "views")

    def __init__(self, own: int, views: list[tuple[Any, int]]) -> None:
        self.own, self.views = own, views

    def point(self, address: int) -> None:
        _point_at(self.views, address)


def _point_at(tensors: list[tuple[Any, int]], address: int) -> None:
    """Make each (tensor, offset from its root) read memory at `address` + offset: a root and its graph views."""
    for tensor, offset in tensors:
        tensor.contents.data = address + offset


def _load_input(view: np.ndarray, moved: _MovedInput, x: Any) -> None:
    """Have ggml read input `x`: in place when it is a plain aligned C-contiguous float32 array, else copied."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned:
        moved.point(x.ctypes.data)
    else:
        moved.point(moved.own)
        view[...] = x


def _mark_output(tensor: Any) -> None:
    """Flag a tensor, and the tensors it views, so gallocr never reuses their memory."""
    while tensor:
        G.ggml_set_output(tensor)
        tensor = tensor.contents.view_src


class _WeightStore:
    """Parameter tensors for one set of parameter shapes, in one exact-size buffer.

    Float32 linear weights whose shape favours ggml_out_prod (`prefers_out_prod`) also get a
    contiguous transposed copy, written with the weights, which gradient-free graphs use.
    A contiguous float32 parameter stored as float32 is not copied: its tensor (and every graph
    view of it) points at the caller's array, so writes into that array are seen by the next call.
    Every other parameter is converted into the buffer and remembered by a snapshot of its source
    (`changed`), so it is converted again when the source array is written in place; a source from
    `GGMLBackend.frozen` is promised unchanged, so it has no snapshot, and its converted weight (one
    array shared by every program that converts it) is read in place rather than copied in.
    """

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], mode: str | None) -> None:
        self.shapes = shapes
        self.types = quant.choose_types(graph, shapes, mode)
        transposable = [
            edge.name
            for edge in graph.params
            if self.types[edge.name][0] == G.GGML_TYPE_F32
            and len(shapes[edge.name]) == 2
            and edge.consumers
            and all(OPS[node.primitive].transposed_input == key for node, key in edge.consumers)
            and prefers_out_prod(*shapes[edge.name])
        ]
        self.ctx = _new_context(len(shapes) + len(transposable) + 1)
        self.tensors = {name: _new_tensor(self.ctx, shape, self.types[name][0]) for name, shape in shapes.items()}
        self.transposed = {name: _new_tensor(self.ctx, shapes[name][::-1], G.GGML_TYPE_F32) for name in transposable}
        self.by_address = {ctypes.addressof(self.tensors[name].contents): t for name, t in self.transposed.items()}
        self.buffer = G.ggml_backend_alloc_ctx_tensors_from_buft(self.ctx, _CPU_BUFT) if shapes else None
        self.own = {name: tensor.contents.data for name, tensor in self.tensors.items()}
        self.views: dict[str, list[tuple[Any, int]]] = {name: [] for name in shapes}
        self.loaded: tuple[Any, ...] | None = None
        self.snapshots: list[tuple[np.ndarray, bytes | np.ndarray]] = []
        self.instances: dict[Any, _Instance | _Empty] = {}

    def add_views(self, graph: Any) -> None:
        """Remember the nodes of `graph` that view a parameter tensor, to move them with it."""
        roots = {ctypes.addressof(t.contents): name for name, t in self.tensors.items()}
        for i in range(G.ggml_graph_n_nodes(graph)):
            node = G.ggml_graph_node(graph, i)
            source = node.contents.view_src
            if source and ctypes.addressof(source.contents) in roots:
                self.views[roots[ctypes.addressof(source.contents)]].append((node, node.contents.view_offs))

    def _point(self, name: str, address: int) -> None:
        """Make parameter `name`'s tensor, and the graph views of it, read memory at `address`."""
        _point_at([(self.tensors[name], 0), *self.views[name]], address)

    def load(self, names: list[str], arrays: tuple[Any, ...], prepared: list[np.ndarray]) -> None:
        """Point at or copy in the prepared weights of `arrays` (transposed copies after them)."""
        self.snapshots = []
        self.pointed: list[np.ndarray] = []  # prepared weights the tensors read in place, kept alive with them
        for name, source, data in zip(names, arrays, prepared):
            tensor = self.tensors[name]
            assert data.nbytes == G.ggml_nbytes(tensor), (name, data.nbytes, G.ggml_nbytes(tensor))
            if _in_place(data, source) and name not in self.transposed:  # float32, contiguous: read in place
                self._point(name, data.ctypes.data)
                continue
            if is_frozen(source) and data.flags.c_contiguous:  # converted once for every program: shared
                self._point(name, data.ctypes.data)
                self.pointed.append(data)
                continue
            self._point(name, self.own[name])
            ctypes.memmove(self.own[name], data.ctypes.data, data.nbytes)
            if not is_frozen(source):
                self.snapshots.append((source, _snapshot(source)))
        for name, data in zip(self.transposed, prepared[len(names) :]):
            _view(self.transposed[name], data.shape)[...] = data
        self.loaded = arrays

    def changed(self) -> bool:
        """Whether a source array of a converted or copied weight was written since it was loaded."""
        return not all(_same(source, snapshot) for source, snapshot in self.snapshots)

    def __del__(self) -> None:
        if self.buffer:
            G.ggml_backend_buffer_free(self.buffer)
        G.ggml_free(self.ctx)


def _in_place(data: np.ndarray, source: Any) -> bool:
    """Whether prepared `data` is `source`'s own memory, unconverted (so ggml can read the source in place)."""
    if data is source:
        return True
    return (
        isinstance(source, np.ndarray)
        and source.flags.c_contiguous
        and data.dtype == source.dtype
        and data.nbytes == source.nbytes
        and data.ctypes.data == source.ctypes.data
    )


class FrozenArray(np.ndarray):
    """A read-only view from `GGMLBackend.frozen`: its creator promises that its memory is not written while
    compiled models use it, so a weight converted from it is never compared with a snapshot."""


# Weights converted from frozen arrays, tagged by ggml type, while the source lives: the step models of one
# generate call (the prompt's and the next token's) quantize each weight once between them.
_FROZEN_PREPARED = DerivedValues()


def _prepared_frozen(array: Any, kind: int, hessian: np.ndarray | None) -> np.ndarray:
    """quant.prepare(array, kind, hessian), shared by every program converting the same frozen array alike."""
    if hessian is not None or not is_frozen(array):
        return quant.prepare(array, kind, hessian)
    return _FROZEN_PREPARED.get(array, kind, lambda: quant.prepare(array, kind, None))


def is_frozen(source: Any) -> bool:
    """Whether `source` is promised unchanged: a read-only FrozenArray from `GGMLBackend.frozen`."""
    return type(source) is FrozenArray and not source.flags.writeable


def _same(source: np.ndarray, snapshot: bytes | np.ndarray) -> bool:
    """Whether `source` still holds the bytes of `snapshot` (NaN and -0.0 included): one memcmp over its memory."""
    block = _block(source)
    if isinstance(snapshot, bytes):
        return (source.tobytes() if block is None else block.tobytes()) == snapshot
    if block is None:  # strided: element by element, as unsigned integers of the same size (NaN equals itself)
        bits = f"u{source.itemsize}"
        return source.shape == snapshot.shape and bool(np.array_equal(source.view(bits), snapshot.view(bits)))
    return block.nbytes == snapshot.nbytes and _memcmp(block.ctypes.data, snapshot.ctypes.data, block.nbytes) == 0


def _snapshot(array: np.ndarray) -> bytes | np.ndarray:
    """A copy of `array`'s bytes, in memory order, to detect in-place writes: bytes when small."""
    block = _block(array)
    if array.nbytes <= _SNAPSHOT_BYTES:
        return array.tobytes() if block is None else block.tobytes()
    return array.copy() if block is None else block.copy()


def _block(array: np.ndarray) -> np.ndarray | None:
    """`array` or its transpose (a Linear weight taken as `.T`), whichever is C-contiguous; None if neither."""
    if array.flags.c_contiguous:
        return array
    return array.T if array.flags.f_contiguous else None


def _libc_memcmp() -> Any:
    """The C library's memcmp: comparing two buffers in one pass, without NumPy's boolean temporary."""
    library = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
    memcmp = ctypes.CDLL(library).memcmp
    memcmp.argtypes, memcmp.restype = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t), ctypes.c_int
    return memcmp


_memcmp = _libc_memcmp()


class _Instance:
    """One static ggml graph for fixed input shapes (for gradients: the joint graph of fixed seeded outputs)."""

    def __init__(
        self,
        program: GGMLProgram,
        store: _WeightStore,
        input_shapes: tuple[tuple[int, ...], ...],
        graph: Graph,
        taps: tuple[Edge, ...] = (),
    ) -> None:
        budget = sum(node_budget(n) for n in graph.nodes) + 64
        self.pctx = _new_context(4 * len(graph.edges) + 16)
        self.gctx = _new_context(budget, G.ggml_graph_overhead_custom(budget, False))
        self._constants: list[tuple[Any, np.ndarray]] = []
        self.writers: list[tuple[int, Callable[[Any], tuple[np.ndarray, ...]], list[tuple[Any, Any]]]] = []
        self.buffer = self.galloc = None
        index = {e.name: i for i, e in enumerate(program.graph.inputs)}
        values: dict[Edge, T] = {}
        self.inputs: list[tuple[Any, int]] = []
        for edge in graph.inputs:
            shape = input_shapes[index[edge.name]]
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

        # A joint (gradient) graph's weights change every step: it reads them directly, not a W^T copy.
        self.joint = graph is not program.graph
        rng = cast(np.random.Generator, _BackendDraws(program.backend))
        builder = Builder(self.gctx, host_tensor, rng, {} if self.joint else store.by_address)
        outputs_by_name = {e.name: e for e in graph.outputs}
        self.seeds: list[tuple[Any, str]] = []
        for node in graph.nodes:
            args = {}
            for k, e in node.inputs.items():
                if e not in values and e.seed_of is not None:  # a seed: the gradient of an output
                    shape = values[outputs_by_name[e.seed_of]].shape
                    values[e] = T(self._persistent(shape, G.GGML_TYPE_F32), shape)
                    self.seeds.append((values[e].tensor, e.seed_of))
                args[k] = values[e]
            result = OPS[node.primitive].build(builder, node, args)
            results = {next(iter(node.outputs)): result} if isinstance(result, T) else result
            for key, edge in node.outputs.items():
                values[edge] = results[key]
                _check_shape(node, edge, results[key])
        # Parameters (or views of them) may point at the caller's arrays, and so may inputs: results get a copy.
        borrowed = {ctypes.addressof(t.contents) for t in store.tensors.values()}
        borrowed |= {ctypes.addressof(t.contents) for t, _ in self.inputs}

        def result(value: T) -> T:
            root = value.tensor.contents.view_src or value.tensor
            if ctypes.addressof(root.contents) in borrowed:
                return T(G.ggml_cont(self.gctx, value.tensor), value.shape)
            return builder.cont(value)

        outputs = {e.name: result(values[e]) for e in (*graph.outputs, *taps)}
        grad_edges = {e.grad_of: e for e in graph.gradients}
        grads = {p.name: result(values[grad_edges[p.name]]) for p in graph.params if p.name in grad_edges}
        self.macs = sum(_macs(n, values) for n in graph.nodes)
        self.out_shapes: dict[str, tuple[int, ...]] = {name: out.shape for name, out in outputs.items()}
        self.grad_shapes: dict[str, tuple[int, ...]] = {name: grad.shape for name, grad in grads.items()}
        self.graph = G.ggml_new_graph_custom(self.gctx, budget, False)
        for out in (*outputs.values(), *grads.values()):
            _mark_output(out.tensor)
            G.ggml_build_forward_expand(self.graph, out.tensor)
        self._allocate()
        store.add_views(self.graph)
        self.in_views = [(_view(t, input_shapes[i]), i) for t, i in self.inputs]
        self.in_place = _readable_in_place(self.graph, [t for t, _ in self.inputs])
        self.host_views = [(i, convert, [_view(t, s) for t, (s, _) in ts]) for i, convert, ts in self.writers]
        self.out_views = [(name, _view(out.tensor, out.shape)) for name, out in outputs.items()]
        # int outputs (arange) are computed as float32 on ggml and handed back as int64, as torch's
        self.int_outputs = {e.name for e in graph.outputs if e.kind == "int"}
        self.seed_views = [(_view(t, self.out_shapes[k]), k) for t, k in self.seeds]
        self.grad_views = [(name, _view(grads[name].tensor, grads[name].shape)) for name in grads]
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
        # Host conversions first: they check indices, so a bad one raises before anything is written.
        converted = [(views, convert(xs[i] if i >= 0 else None)) for i, convert, views in self.host_views]
        for (view, i), moved in zip(self.in_views, self.in_place):
            if moved is None:
                view[...] = xs[i]
            else:
                _load_input(view, moved, xs[i])
        for views, values in converted:
            for view, value in zip(views, values):
                view[...] = value
        if seeds is not None:
            for view, key in self.seed_views:
                view[...] = seeds[key]
        status = _COMPUTE(*self.compute_args)
        if status != G.GGML_STATUS_SUCCESS:
            _compute_failed(status)
        return {
            name: view.astype(np.int64) if name in self.int_outputs else view.copy() for name, view in self.out_views
        }

    def gradients(self) -> dict[str, np.ndarray]:
        return {name: view.copy() for name, view in self.grad_views}

    def __del__(self) -> None:
        if getattr(self, "threadpool", None):
            G.ggml_threadpool_free(self.threadpool)
        if self.galloc:
            G.ggml_gallocr_free(self.galloc)
        if self.buffer:
            G.ggml_backend_buffer_free(self.buffer)
        G.ggml_free(self.gctx)
        G.ggml_free(self.pctx)


class _Empty:
    """The answer to inputs with a zero-size axis, which ggml cannot allocate (nor some of its ops build).

    Output shapes come from two graphs with those axes at 1 and 2: the axes that follow are empty.
    Outputs are empty and gradients zero (no element contributes); an output that would not be
    empty (a reduction over the empty axis) is refused rather than guessed.
    """

    def __init__(self, program: GGMLProgram, one: _Instance | _Empty, two: _Instance | _Empty) -> None:
        self.out_shapes: dict[str, tuple[int, ...]] = {
            name: tuple(0 if a != b else a for a, b in zip(shape, two.out_shapes[name]))
            for name, shape in one.out_shapes.items()
        }
        self.grad_shapes: dict[str, tuple[int, ...]] = one.grad_shapes
        full = sorted(name for name, shape in self.out_shapes.items() if math.prod(shape))
        if full:
            raise UnsupportedError(
                f"{program.graph.model.describe()}: backend 'ggml' cannot compute outputs {full} of an empty "
                "input (their value would not be empty)"
            )

    def run(self, xs: tuple[Any, ...], seeds: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, np.float32) for name, shape in self.out_shapes.items()}

    def gradients(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, np.float32) for name, shape in self.grad_shapes.items()}


class _BackendDraws:
    """The backend's generator as it is at each draw (dropout masks), so `set_seed` reaches graphs built earlier."""

    def __init__(self, backend: GGMLBackend) -> None:
        self.backend = backend

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.backend._rng.random(shape)


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
    """Multiply-accumulates of one node from its declaration's count (used to pick the thread count)."""
    count = get(node.primitive).macs
    if count is None:
        return 0
    return count({key: values[edge].shape for key, edge in (*node.inputs.items(), *node.outputs.items())})


class GGMLProgram(Program):
    """Runs a compiled model on ggml; see the module docstring for the caching rules."""

    def __init__(self, backend: GGMLBackend, graph: Graph, options: CompileOptions) -> None:
        for node in graph.nodes:
            check_node(node)
        self.backend = backend
        self.graph = graph
        self.options = options
        self.param_names = [e.name for e in graph.params]
        # One call at a time: the graphs' input, output and weight buffers are shared by all calls.
        self._lock = threading.Lock()
        self._stores: dict[tuple[tuple[int, ...], ...], _WeightStore] = {}
        self._last_store: _WeightStore | None = None
        self._prepared: OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], list[np.ndarray], list[Any]]] = (
            OrderedDict()
        )
        self.grad_problem = None if options.inference else self._find_grad_problem()
        self._joints: dict[frozenset[str], Graph] = {}
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
        if self.backend.quantize is None:
            return None
        return (
            f"{self.graph.model.describe()}: gradients need float32 weights, but the backend quantizes them "
            f"(GGMLBackend(quantize={self.backend.quantize!r})); compile with GGMLBackend() to train"
        )

    def joint(self, grad_keys: frozenset[str]) -> Graph:
        """The core's forward+backward graph seeded at the outputs `grad_keys`, built once per subset."""
        joint = self._joints.get(grad_keys)
        if joint is None:
            joint = joint_graph(self.graph, sorted(grad_keys), OPS.__contains__)
            for node in joint.nodes:
                check_node(node)
            self._joints[grad_keys] = joint
        return joint

    def _build_static(self) -> tuple[_WeightStore, _Instance] | None:
        """With every shape known at compile time, build the forward graph now."""
        inputs = [static_shape(e) for e in self.graph.inputs]
        params = [static_shape(e) for e in self.graph.params]
        if not all(s is not None and None not in s for s in [*inputs, *params]):
            return None
        store = self._store(tuple(params))  # type: ignore[arg-type]
        key = tuple(inputs)
        inst = store.instances[key] = _Instance(self, store, key, self.graph)  # type: ignore[arg-type]
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
        store_name = gen.constant(store, "store")
        converted = [
            f"{gen.constant(convert, 'c')}({'None' if i < 0 else names[i]})" for i, convert, _ in inst.host_views
        ]
        body = [
            f"loaded = {store_name}.loaded",
            f"if loaded is None{stale} or {store_name}.changed():",
            f"    {weights}()(params, ({''.join(f'{p}, ' for p in params)}))",
        ]
        load_input = gen.constant(_load_input, "load_input")
        body += [
            f"{gen.constant(view, 'x')}[...] = {names[i]}"
            if moved is None
            else f"{load_input}({gen.constant(view, 'x')}, {gen.constant(moved, 'moved')}, {names[i]})"
            for (view, i), moved in zip(inst.in_views, inst.in_place)
        ]
        for n, (_, _, views) in enumerate(inst.host_views):
            body.append(f"for view, value in zip({gen.constant(views, 'h')}, converted{n}):")
            body.append("    view[...] = value")
        graph, plan = inst.compute_args
        as_int = f"astype({gen.constant(np.int64, 'int')})"
        outputs = ", ".join(
            f"{name!r}: {gen.constant(view, 'y')}.{as_int if name in inst.int_outputs else 'copy()'}"
            for name, view in inst.out_views
        )
        body += [
            f"status = {gen.constant(_COMPUTE, 'compute')}({graph}, {plan})",
            f"if status != {G.GGML_STATUS_SUCCESS}:",
            f"    {gen.constant(_compute_failed, 'failed')}(status)",
            f"return {{{outputs}}}",
        ]
        # Host conversions (index checks) run before the lock: a bad index raises before any work.
        lines = [*load, *(f"converted{n} = {c}" for n, c in enumerate(converted))]
        lines += [f"with {gen.constant(self._lock, 'lock')}:", *(f"    {line}" for line in body)]
        return function("forward", "params, inputs", lines)

    # -- weights ---------------------------------------------------------------------
    def _store(self, shapes: tuple[tuple[int, ...], ...]) -> _WeightStore:
        store = self._stores.get(shapes)
        if store is None:
            store = _WeightStore(self.graph, dict(zip(self.param_names, shapes)), self.backend.quantize)
            self._stores[shapes] = store
            self._report = {name: note for name, (_, note) in store.types.items()}
        return store

    def _weights(self, params: Mapping[str, Any], ps: tuple[Any, ...]) -> _WeightStore:
        """The store holding weights for the arrays `ps`, loaded unless it already holds their current values."""
        store = self._last_store
        if store is not None and store.loaded is not None and all(map(operator.is_, store.loaded, ps)):
            if not store.changed():  # the same arrays as last call: skip the shape key and the lookup
                return store
            return self._reload(params, ps, store, fresh=True)
        store = self._last_store = self._store(tuple(tuple(p.shape) for p in ps))
        loaded = store.loaded
        if loaded is not None and len(loaded) == len(ps) and all(a is b for a, b in zip(loaded, ps)):
            return store if not store.changed() else self._reload(params, ps, store, fresh=True)
        return self._reload(params, ps, store, fresh=False)

    def _reload(self, params: Mapping[str, Any], ps: tuple[Any, ...], store: _WeightStore, fresh: bool) -> _WeightStore:
        """Load `ps` into `store`; converted weights come from the cache unless `fresh` or their sources changed."""
        key = tuple(id(p) for p in ps)
        cached = self._prepared.get(key)
        if (
            not fresh
            and cached is not None
            and all(a is b for a, b in zip(cached[0], ps))
            and all(_same(source, snapshot) for source, snapshot in cached[2])
        ):
            prepared = cached[1]
        else:
            prepared = self._convert(params, ps, store, fresh)
        store.load(self.param_names, ps, prepared)
        if not self.calibration and all(map(is_frozen, ps)):  # shared by _FROZEN_PREPARED while they live
            return store
        self._prepared[key] = (ps, prepared, store.snapshots)
        self._prepared.move_to_end(key)
        while len(self._prepared) > _PREPARED_CACHE:
            self._prepared.popitem(last=False)
        return store

    def _convert(
        self, params: Mapping[str, Any], ps: tuple[Any, ...], store: _WeightStore, fresh: bool = False
    ) -> list[np.ndarray]:
        """Weights in their storage types; the stored bytes of GGUF params are used unless `fresh`."""
        stored = {} if fresh else getattr(params, "stored", {})
        out = []
        for name, array in zip(self.param_names, ps):
            kind = store.types[name][0]
            hit = stored.get(name)
            if hit is not None and hit[0] == kind and hit[1] is array:
                out.append(hit[2])
            else:
                out.append(_prepared_frozen(array, kind, self.calibration.get(name)))
        by_name = dict(zip(self.param_names, out))
        out.extend(np.ascontiguousarray(by_name[name].T) for name in store.transposed)
        return out

    def calibrate(self, hessians: dict[str, np.ndarray], rows: dict[str, int]) -> None:
        """Quantize weights with GPTQ on these input Gram matrices, from `rows` samples each, from now on."""
        with self._lock:
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
        with self._lock:
            store = self._weights(params, ps)
            key = (tuple(tuple(x.shape) for x in xs), taps)
            inst = store.instances.get(key)
            if inst is None:
                inst = store.instances[key] = _Instance(self, store, key[0], self.graph, taps)
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
    def _instance(
        self, store: _WeightStore, xs: tuple[Any, ...], grad_keys: frozenset[str] | None
    ) -> _Instance | _Empty:
        """The graph for these input shapes (and seeded outputs), built on first use; `_Empty` for empty inputs."""
        shapes = tuple(tuple(x.shape) for x in xs)
        key: Any = shapes if grad_keys is None else (shapes, grad_keys)
        inst = store.instances.get(key)
        if inst is None:
            if any(0 in shape for shape in shapes):
                one, two = ([np.empty([d or n for d in s], np.float32) for s in shapes] for n in (1, 2))
                inst = _Empty(
                    self, self._instance(store, tuple(one), grad_keys), self._instance(store, tuple(two), grad_keys)
                )
            else:
                graph = self.graph if grad_keys is None else self.joint(grad_keys)
                inst = _Instance(self, store, shapes, graph)
            store.instances[key] = inst
        return inst

    def forward(self, params: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        xs, ps = self._check(params, inputs)
        with self._lock:
            store = self._weights(params, ps)
            return self._instance(store, xs, None).run(xs)

    def forward_backward(
        self, params: Mapping[str, Any], inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.grad_problem is not None:
            raise UnsupportedError(self.grad_problem)
        xs, ps = self._check(params, inputs)
        names = {e.name for e in self.graph.outputs}
        owner = self.graph.model.describe()
        if not isinstance(output_gradients, Mapping):
            raise TypeError(
                f"{owner}: output_gradients must be a dict from output name to gradient array (outputs "
                f"{sorted(names)}), got {type(output_gradients).__name__}"
            )
        if not output_gradients or set(output_gradients) - names:
            raise KeyNotFoundError(
                f"{owner}: output_gradients keys {sorted(map(str, output_gradients))} must be a non-empty subset "
                f"of the outputs {sorted(names)}"
            )
        with self._lock:
            store = self._weights(params, ps)
            inst = self._instance(store, xs, frozenset(output_gradients))
            for key, grad in output_gradients.items():
                if not isinstance(grad, np.ndarray) or grad.shape != inst.out_shapes[key] or grad.dtype != np.float32:
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
