"""Python source generation: one straight-line function per compiled model.

Python backends build their programs from these pieces, so a compiled model costs
what the same code written by hand costs; the source is kept for users to read.
"""

from __future__ import annotations

import itertools
import keyword
import linecache
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .backend import Backend, Kernel, OpImpl
from .errors import KeyNotFoundError, UnsupportedError
from .graph import Edge, Graph, Node
from .models.rules import flatten_span
from .primitives import PRIMITIVES
from .shapes import Dim, Var, resolve
from .validation import make_index_check

__all__ = [
    "PythonCodegen",
    "GradientSubsets",
    "static_shape",
    "function",
    "forward_function",
    "joint_functions",
    "CONSTANT",
    "free_after_last_use",
    "keyword_call",
    "flatten_shape",
]

_RESERVED = {"params", "inputs", "output_gradients", "state"}
# The op-table entry of `scalar` and `constant`: the value becomes a backend array built once, at compile time.
CONSTANT = "<constant>"
_counter = itertools.count()
_NON_WORD = re.compile(r"\W")


def static_shape(edge: Edge) -> tuple[int | None, ...] | None:
    """The edge's shape as ints (None for symbolic dims), or None when its rank is unknown."""
    known = edge.concrete_shape()  # remembered by the edge once every size is known
    if known is not None:
        return known
    out: list[int | None] = []
    for item in resolve(edge.shape.items):
        if isinstance(item, Var):
            return None
        out.append(item.value)
    return tuple(out)


class PythonCodegen:
    """Names every edge and emits the lines of forward and backward functions."""

    def __init__(
        self,
        graph: Graph,
        backend: Backend,
        ops: Mapping[str, OpImpl],
        namespace: Mapping[str, Any],
        inline: bool = True,
    ) -> None:
        self.graph = graph
        self.backend = backend
        self.ops = ops
        self.namespace: dict[str, Any] = dict(namespace)
        missing = sorted({n.primitive for n in graph.nodes if n.primitive not in ops})
        if missing:
            where = {n.primitive: n.path for n in graph.nodes}
            detail = ", ".join(f"{p!r} (used by {where[p]!r})" for p in missing)
            raise UnsupportedError(
                f"{graph.model.describe()}: backend {backend.name!r} has no implementation of {detail}"
            )
        taken = set(self.namespace) | _RESERVED
        self.names: dict[Edge, str] = {}
        # single-use values waiting to be written into their consumer's expression
        self.inlined: dict[Edge, str] = {}
        self.inline = inline
        self._constants: dict[tuple[Any, ...], str] = {}
        # the edges of each role, in graph order, taken once: a graph is final when code is made from it
        self._by_role: dict[str, list[Edge]] = {}
        for edge in graph.edges:
            self.names[edge] = self._unique(edge.name, taken)
            self._by_role.setdefault(edge.role, []).append(edge)
        self._taken = taken

    def edges(self, role: str) -> list[Edge]:
        """The graph's edges of `role` ("param", "input", "output", "internal", "seed" or "gradient")."""
        return self._by_role.get(role, [])

    # -- naming --------------------------------------------------------------------
    @staticmethod
    def _unique(name: str, taken: set[str]) -> str:
        ident = name.replace(".", "_")  # edge names are dotted paths: most need nothing else
        if not (ident.isascii() and ident.isidentifier()):
            ident = _NON_WORD.sub("_", name)
        if not ident or ident[0].isdigit() or ident[0] == "_" or keyword.iskeyword(ident):
            ident = "v_" + ident
        base, n = ident, 1
        while ident in taken:
            ident, n = f"{base}_{n}", n + 1
        taken.add(ident)
        return ident

    def fresh(self, hint: str) -> str:
        """A new local variable name."""
        return self._unique(hint, self._taken)

    def constant(self, value: Any, hint: str = "c") -> str:
        """Put `value` in the function's globals and return its name."""
        name = f"_{hint}{next(_counter)}"
        self.namespace[name] = value
        return name

    # -- expressions ---------------------------------------------------------------
    def expr(self, node: Node, impl: OpImpl, args: Mapping[str, str]) -> str:
        if impl is CONSTANT:
            shape = tuple(node.attrs.get("shape", ()))
            key = (node.attrs["value"], shape)
            if key not in self._constants:
                self._constants[key] = self.constant(self.backend.constant(node.attrs["value"], shape), "const")
            return self._constants[key]
        if isinstance(impl, str):
            return impl.format(**{k: repr(v) for k, v in node.attrs.items()}, **args)
        if isinstance(impl, Kernel):
            fn = self.constant(impl.fn, "k")
            pos = [args[k] for k in node.inputs]
            kw = [f"{k}={v!r}" for k, v in node.attrs.items()]
            return f"{fn}({', '.join(pos + kw)})"
        return impl(node, args)

    def args(self, node: Node) -> dict[str, str]:
        return {k: self.names[e] for k, e in node.inputs.items()}

    # -- prologue: load and check ----------------------------------------------------
    def load_lines(self, diagnose: str, index_checks: bool = True) -> list[str]:
        """Read params and inputs into locals, checking keys, shapes and dtypes in one pass, then index ranges."""
        params, inputs = self.edges("param"), self.edges("input")
        lines = ["try:"]
        lines += [f"    {self.names[e]} = params[{e.name!r}]" for e in params]
        lines += [f"    {self.names[e]} = inputs[{e.name!r}]" for e in inputs]
        checks = self._checks([*params, *inputs])
        lines.append(f"    if len(params) != {len(params)} or len(inputs) != {len(inputs)}{checks}:")
        lines.append(f"        {diagnose}(params, inputs)")
        lines.append("except (KeyError, TypeError, AttributeError, IndexError):")
        lines.append(f"    {diagnose}(params, inputs)")
        return lines + (self.index_check_lines() if index_checks else [])

    def index_check_lines(self) -> list[str]:
        """Check integer index inputs against their valid range (after load_lines has read them).

        Backends that trace their code (JAX's jit) call this outside the traced function.
        """
        g = self.graph
        if not g.index_checks:
            return []
        check = self.constant(make_index_check(g, self.backend), "check_index")
        inputs = {e.name: e for e in self.edges("input")}
        return [f"{check}({self.names[inputs[spec.key]]}, {self.constant(spec, 'index')})" for spec in g.index_checks]

    def grad_check_lines(self, grad_edges: Sequence[Edge], grad_names: Sequence[str], diagnose: str) -> list[str]:
        """Load output gradients and check each against its output's actual shape, and float ones' dtype."""
        lines = ["try:"]
        lines += [f"    {gn} = output_gradients[{e.name!r}]" for e, gn in zip(grad_edges, grad_names)]
        if grad_edges:
            lhs = ", ".join(f"{gn}.shape" for gn in grad_names)
            rhs = ", ".join(f"{self.names[e]}.shape" for e in grad_edges)
            kinds = self._kind_checks([(gn, e.kind == "float") for e, gn in zip(grad_edges, grad_names)])
            lines.append(f"    if ({lhs},) != ({rhs},){kinds}:")
            lines.append(f"        {diagnose}(params, inputs, output_gradients, {self.outputs_expr()})")
        lines.append("except (KeyError, TypeError, AttributeError):")
        lines.append(f"    {diagnose}(params, inputs, output_gradients, {self.outputs_expr()})")
        return lines

    def _checks(self, edges: Sequence[Edge]) -> str:
        shape_exprs, shape_expected = [], []
        for edge in edges:
            check = _shape_check(self.names[edge], edge)
            if check is not None:
                shape_exprs.append(check[0])
                shape_expected.append(check[1])
        text = ""
        if shape_exprs:
            text += f" or ({', '.join(shape_exprs)},) != {self.constant(tuple(shape_expected), 'shapes')}"
        text += "".join(f" or {a} != {b}" for a, b in self._shared_dims(edges))
        return text + self._kind_checks([(self.names[e], e.kind == "float") for e in edges])

    def _shared_dims(self, edges: Sequence[Edge]) -> list[tuple[str, str]]:
        """Pairs of `var.shape[i]` expressions that must be equal: one symbolic dimension in several places
        (the batch axis of an input and of its target), which the static shape tuple cannot check."""
        places: dict[int, list[str]] = {}
        for edge in edges:
            items = resolve(edge.shape.items)
            var_at = next((i for i, it in enumerate(items) if isinstance(it, Var)), len(items))
            for i, item in enumerate(items):
                if isinstance(item, Dim) and item.value is None and i != var_at:
                    index = i if i < var_at else i - len(items)
                    places.setdefault(id(item), []).append(f"{self.names[edge]}.shape[{index}]")
        return [(where[0], other) for where in places.values() for other in where[1:]]

    def _kind_checks(self, variables: Sequence[tuple[str, bool]]) -> str:
        """` or (dtypes and devices,) != expected` for (variable, is float) pairs: float ones must have the
        backend's dtype; every one passes the backend's `extra_checks` (e.g. its device)."""
        exprs, expected = [], []
        for var, is_float in variables:
            if is_float:
                exprs.append(f"{var}.dtype")
                expected.append(self.backend.native_dtype(self.backend.dtype))
            for expr, value in self.backend.extra_checks(var):
                exprs.append(expr)
                expected.append(value)
        if not exprs:
            return ""
        return f" or ({', '.join(exprs)},) != {self.constant(tuple(expected), 'dtypes')}"

    # -- body ----------------------------------------------------------------------
    def forward_lines(self, nodes: Sequence[Node] | None = None) -> list[str]:
        """One line per node, except that a value used once by a later op is written into that op's
        expression (when the op's code names it once; one level deep, so lines stay short), and a
        bare name (an alias or a constant) takes no line at all."""
        lines: list[str] = []
        names, inlined, ops = self.names, self.inlined, self.ops
        for node in self.graph.nodes if nodes is None else nodes:
            args = {k: names[e] for k, e in node.inputs.items()}
            pending = {k: e for k, e in node.inputs.items() if e in inlined} if inlined else {}
            for key in pending:
                args[key] = f"__inline_{key}__"
            value = self.expr(node, ops[node.primitive], args)
            for key, edge in pending.items():
                text = inlined.pop(edge)
                if value.count(args[key]) != 1:
                    lines.append(f"{names[edge]} = {text}")
                    text = names[edge]
                value = value.replace(args[key], text)
            if len(node.outputs) == 1:
                out = next(iter(node.outputs.values()))
                if value.isidentifier():
                    names[out] = value
                    continue
                if not pending and self._inlinable(node, out):
                    inlined[out] = f"({value})"
                    continue
            targets = ", ".join(names[e] for e in node.outputs.values())
            lines.append(f"{targets} = {value}")
        return lines

    def _inlinable(self, node: Node, out: Edge) -> bool:
        """A pure op whose internal result has exactly one consumer, which is not a multi-output op."""
        if out.role != "internal" or len(out.consumers) != 1 or not self.inline:
            return False
        decl = PRIMITIVES.get(node.primitive)
        return decl is not None and not decl.random and len(out.consumers[0][0].outputs) == 1

    def outputs_expr(self, wrap: Callable[[str], str] = lambda v: v) -> str:
        items = ", ".join(f"{e.name!r}: {wrap(self.names[e])}" for e in self.edges("output"))
        return "{" + items + "}"

    # -- assembly --------------------------------------------------------------------
    def build(self, source: str, file_path: str | None = None) -> dict[str, Any]:
        """Execute `source` in the namespace; returns the namespace holding its functions."""
        if file_path is not None:
            with open(file_path, "w", encoding="utf-8") as handle:
                handle.write(source)
            filename = file_path
        else:
            filename = f"<mithril-{self.backend.name}-{next(_counter)}>"
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = dict(self.namespace)
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
        return namespace


def function(name: str, params: str, body: Sequence[str]) -> str:
    """Source of a function with an indented body."""
    return f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in body)


def keyword_call(fn: str, inputs: tuple[str, ...], attrs: tuple[str, ...]) -> Callable[[Node, Mapping[str, str]], str]:
    """An op calling kernel `fn` with every input positionally (None when absent), then the named attributes."""

    def emit(node: Node, a: Mapping[str, str]) -> str:
        args = [a.get(k, "None") for k in inputs] + [repr(node.attrs[k]) for k in attrs]
        return f"{fn}({', '.join(args)})"

    return emit


def flatten_shape(node: Node, x: str) -> str:
    """The target-shape expression of a flatten node applied to variable `x` (needs the rank at compile time)."""
    shape = static_shape(node.inputs["input"])
    if shape is None:
        raise ValueError(f"{node.path}: flatten needs the rank of its input at compile time; give ml.compile shapes=")
    span = flatten_span(node.attrs["start_dim"], node.attrs["end_dim"], len(shape))
    if span is None:
        return "(1,)"
    s, e = span
    return f"{x}.shape[:{s}] + (-1,) + {x}.shape[{e + 1}:]"


def _shape_check(var: str, edge: Edge) -> tuple[str, tuple[Any, ...]] | None:
    items = resolve(edge.shape.items)
    var_at = next((i for i, it in enumerate(items) if isinstance(it, Var)), -1)
    values = [it.value if isinstance(it, Dim) else None for it in items]
    if var_at < 0:
        if all(v is not None for v in values):
            return f"{var}.shape", tuple(values)
        exprs: list[str] = [f"len({var}.shape)"]
        expected: list[Any] = [len(values)]
        start = None
        for i, v in enumerate([*values, None]):
            if v is not None and start is None:
                start = i
            elif v is None and start is not None:
                exprs.append(f"{var}.shape[{start}:{i}]")
                expected.append(tuple(values[start:i]))
                start = None
        return f"({', '.join(exprs)},)", tuple(expected)
    tail: list[int] = []
    for v in reversed(values[var_at + 1 :]):
        if v is None:
            break
        tail.insert(0, v)
    if not tail:
        return None
    return f"{var}.shape[-{len(tail)}:]", tuple(tail)


_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")


def free_after_last_use(lines: Sequence[str], candidates: set[str], keep: set[str]) -> list[str]:
    """Insert `del` statements right after each candidate's last use, so arrays die as early as possible.

    `lines` must be top-level statements; only names the lines assign are deleted, and never
    those in `keep` (returned values).
    """
    assigned = {name for line in lines if "=" in line for name in _IDENT.findall(line.split("=", 1)[0])}
    last: dict[str, int] = {}
    for index, line in enumerate(lines):
        for name in _IDENT.findall(line):
            if name in candidates and name in assigned and name not in keep:
                last[name] = index
    by_line: dict[int, list[str]] = {}
    for name, index in last.items():
        by_line.setdefault(index, []).append(name)
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        if index in by_line:
            out.append("del " + ", ".join(sorted(by_line[index])))
    return out


def forward_function(gen: PythonCodegen, diagnose: str) -> str:
    """Source of `forward(params, inputs)`: checks, the ops in order, the outputs dict."""
    internal = {gen.names[e] for e in gen.edges("internal")}
    body = free_after_last_use(gen.forward_lines(), internal, {gen.names[e] for e in gen.edges("output")})
    return function("forward", "params, inputs", [*gen.load_lines(diagnose), *body, f"return {gen.outputs_expr()}"])


def joint_functions(gen: PythonCodegen, diagnose: str, partial: str | None) -> str:
    """Source of `forward_backward` for a joint graph (`mithril.primitives.joint_graph`).

    The forward ops, then the seeds (output gradients) checked against the outputs, then the
    backward ops; returns (outputs, gradients). `partial` names a function that handles calls
    giving gradients for another subset of outputs (None when the seeds already are that subset).
    """
    graph = gen.graph
    seeds = gen.edges("seed")
    head = (
        []
        if partial is None
        else [
            f"if len(output_gradients) != {len(seeds)}:",
            f"    return {partial}(params, inputs, output_gradients)",
        ]
    )
    forward = gen.forward_lines(graph.nodes[: graph.forward_count])
    backward = gen.forward_lines(graph.nodes[graph.forward_count :])
    outputs = {e.name: e for e in gen.edges("output")}
    checks = gen.grad_check_lines([outputs[e.seed_of or ""] for e in seeds], [gen.names[e] for e in seeds], diagnose)
    by_param = {e.grad_of: e for e in gen.edges("gradient")}
    grads = "{" + ", ".join(f"{p.name!r}: {gen.names[by_param[p.name]]}" for p in gen.edges("param")) + "}"
    internal = {gen.names[e] for e in [*gen.edges("internal"), *seeds]}
    keep = {gen.names[e] for e in [*outputs.values(), *gen.edges("gradient")]}
    freed = free_after_last_use([*forward, "# backward", *backward], internal, keep)
    split = freed.index("# backward")
    body = [*head, *gen.load_lines(diagnose), *freed[:split], *checks, *freed[split + 1 :]]
    return function(
        "forward_backward", "params, inputs, output_gradients", [*body, f"return {gen.outputs_expr()}, {grads}"]
    )


class GradientSubsets:
    """forward_backward for calls giving gradients for only some outputs: one function per subset, built once.

    `build(edges)` returns the function for the output edges `edges`; generated code
    calls an instance when `len(output_gradients)` differs from its full set.
    """

    def __init__(self, graph: Graph, build: Callable[[list[Edge]], Callable[..., Any]]) -> None:
        self.graph = graph
        self.build = build
        self.names = {e.name for e in graph.outputs if e.updates is None}
        self.cache: dict[frozenset[str], Callable[..., Any]] = {}

    def __call__(self, params: Any, inputs: Any, output_gradients: Mapping[str, Any]) -> Any:
        if not isinstance(output_gradients, Mapping):
            raise TypeError(
                f"{self.graph.model.describe()}: output_gradients must be a dict keyed by output name, "
                f"got {type(output_gradients).__name__}"
            )
        key = frozenset(output_gradients)
        fn = self.cache.get(key)
        if fn is None:
            if not key or not key <= self.names:
                raise KeyNotFoundError(
                    f"{self.graph.model.describe()}: output_gradients keys {sorted(map(str, key))} must be a "
                    f"non-empty subset of the outputs {sorted(self.names)}"
                )
            fn = self.cache[key] = self.build([e for e in self.graph.outputs if e.name in key])
        return fn(params, inputs, output_gradients)
