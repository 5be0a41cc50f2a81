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
from .shapes import Dim, Var, resolve

__all__ = [
    "PythonCodegen",
    "GradientSubsets",
    "static_shape",
    "function",
    "forward_function",
    "vjp_functions",
    "free_after_last_use",
    "keyword_call",
    "flatten_shape",
]

_RESERVED = {"params", "inputs", "output_gradients", "state"}
_counter = itertools.count()


def static_shape(edge: Edge) -> tuple[int | None, ...] | None:
    """The edge's shape as ints (None for symbolic dims), or None when its rank is unknown."""
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
        vjps: Mapping[str, Mapping[str, OpImpl]] | None = None,
    ) -> None:
        self.graph = graph
        self.backend = backend
        self.ops = ops
        self.vjps = vjps
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
        for edge in graph.edges:
            self.names[edge] = self._unique(edge.name, taken)
        self._taken = taken

    # -- naming --------------------------------------------------------------------
    @staticmethod
    def _unique(name: str, taken: set[str]) -> str:
        ident = re.sub(r"\W", "_", name)
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
    def load_lines(self, diagnose: str) -> list[str]:
        """Read params and inputs into locals, checking keys, shapes and dtypes in one pass."""
        g = self.graph
        lines = ["try:"]
        lines += [f"    {self.names[e]} = params[{e.name!r}]" for e in g.params]
        lines += [f"    {self.names[e]} = inputs[{e.name!r}]" for e in g.inputs]
        checks = self._checks([*g.params, *g.inputs])
        lines.append(f"    if len(params) != {len(g.params)} or len(inputs) != {len(g.inputs)}{checks}:")
        lines.append(f"        {diagnose}(params, inputs)")
        lines.append("except (KeyError, TypeError, AttributeError, IndexError):")
        lines.append(f"    {diagnose}(params, inputs)")
        return lines

    def grad_check_lines(self, grad_edges: Sequence[Edge], grad_names: Sequence[str], diagnose: str) -> list[str]:
        """Load output gradients and check each against its output's actual shape."""
        lines = ["try:"]
        lines += [f"    {gn} = output_gradients[{e.name!r}]" for e, gn in zip(grad_edges, grad_names)]
        if grad_edges:
            lhs = ", ".join(f"{gn}.shape" for gn in grad_names)
            rhs = ", ".join(f"{self.names[e]}.shape" for e in grad_edges)
            lines.append(f"    if ({lhs},) != ({rhs},):")
            lines.append(f"        {diagnose}(params, inputs, output_gradients, {self.outputs_expr()})")
        lines.append("except (KeyError, TypeError, AttributeError):")
        lines.append(f"    {diagnose}(params, inputs, output_gradients, {self.outputs_expr()})")
        return lines

    def _checks(self, edges: Sequence[Edge]) -> str:
        shape_exprs, shape_expected, dtype_exprs, dtype_expected = [], [], [], []
        for edge in edges:
            var = self.names[edge]
            check = _shape_check(var, edge)
            if check is not None:
                shape_exprs.append(check[0])
                shape_expected.append(check[1])
            if edge.kind == "float":
                dtype_exprs.append(f"{var}.dtype")
                dtype_expected.append(self.backend.native_dtype(self.backend.dtype))
            for expr, expected in self.backend.extra_checks(var):
                dtype_exprs.append(expr)
                dtype_expected.append(expected)
        text = ""
        if shape_exprs:
            text += f" or ({', '.join(shape_exprs)},) != {self.constant(tuple(shape_expected), 'shapes')}"
        if dtype_exprs:
            text += f" or ({', '.join(dtype_exprs)},) != {self.constant(tuple(dtype_expected), 'dtypes')}"
        return text

    # -- body ----------------------------------------------------------------------
    def forward_lines(self, nodes: Sequence[Node] | None = None) -> list[str]:
        lines = []
        for node in self.graph.nodes if nodes is None else nodes:
            targets = ", ".join(self.names[e] for e in node.outputs.values())
            lines.append(f"{targets} = {self.expr(node, self.ops[node.primitive], self.args(node))}")
        return lines

    def outputs_expr(self, wrap: Callable[[str], str] = lambda v: v) -> str:
        items = ", ".join(f"{e.name!r}: {wrap(self.names[e])}" for e in self.graph.outputs)
        return "{" + items + "}"

    def backward_lines(
        self, grad_edges: Sequence[Edge], grad_names: Sequence[str], zeros_like: str
    ) -> tuple[list[str], str]:
        """Reverse-mode code from the VJP table; returns the lines and the gradients dict expression."""
        assert self.vjps is not None
        needs = _depends_on_params(self.graph)
        contributions: dict[Edge, list[str]] = {e: [gn] for e, gn in zip(grad_edges, grad_names)}
        lines: list[str] = []
        for node in reversed(self.graph.nodes):
            outs = {k: e for k, e in node.outputs.items() if contributions.get(e)}
            wanted = [k for k, e in node.inputs.items() if e in needs]
            if not outs or not wanted:
                continue
            args = self.args(node)
            for key, edge in node.outputs.items():
                args[key] = self.names[edge]
                parts = contributions.get(edge, [])
                args["g_" + key] = self._sum(parts, f"g_{self.names[edge]}", lines) if key in outs else "None"
            args["g"] = args["g_" + next(iter(node.outputs))]
            rules = self.vjps.get(node.primitive, {})
            for key in wanted:
                if key not in rules:
                    raise UnsupportedError(
                        f"backend {self.backend.name!r} has no gradient rule for input {key!r} of primitive "
                        f"{node.primitive!r} (used by {node.path!r}); compile with inference=True for forward only"
                    )
                tmp = self.fresh(f"d_{node.path}_{key}")
                lines.append(f"{tmp} = {self.expr(node, rules[key], args)}")
                contributions.setdefault(node.inputs[key], []).append(tmp)
        grads = []
        for edge in self.graph.params:
            parts = contributions.get(edge, [])
            value = self._sum(parts, f"g_{self.names[edge]}", lines) if parts else zeros_like.format(self.names[edge])
            grads.append(f"{edge.name!r}: {value}")
        return lines, "{" + ", ".join(grads) + "}"

    def _sum(self, parts: list[str], hint: str, lines: list[str]) -> str:
        if len(parts) == 1:
            return parts[0]
        name = self.fresh(hint)
        lines.append(f"{name} = {' + '.join(parts)}")
        parts[:] = [name]
        return name

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
        return f"({', '.join(exprs)})", tuple(expected)
    tail: list[int] = []
    for v in reversed(values[var_at + 1 :]):
        if v is None:
            break
        tail.insert(0, v)
    if not tail:
        return None
    return f"{var}.shape[-{len(tail)}:]", tuple(tail)


def _depends_on_params(graph: Graph) -> set[Edge]:
    needs = {e for e in graph.params if e.kind != "int"}
    for node in graph.nodes:
        if any(e in needs for e in node.inputs.values()):
            needs.update(e for e in node.outputs.values() if e.kind == "float")
    return needs


_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")


def free_after_last_use(lines: Sequence[str], candidates: set[str], keep: set[str]) -> list[str]:
    """Insert `del` statements right after each candidate's last use, so arrays die as early as possible.

    `lines` must be top-level statements; names in `keep` (returned values) are never deleted.
    """
    last: dict[str, int] = {}
    for index, line in enumerate(lines):
        for name in _IDENT.findall(line):
            if name in candidates and name not in keep:
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
    internal = {gen.names[e] for e in gen.graph.edges if e.role == "internal"}
    body = free_after_last_use(gen.forward_lines(), internal, {gen.names[e] for e in gen.graph.outputs})
    return function("forward", "params, inputs", [*gen.load_lines(diagnose), *body, f"return {gen.outputs_expr()}"])


def vjp_functions(
    gen: PythonCodegen, diagnose: str, grad_edges: Sequence[Edge], zeros_like: str, partial: str | None
) -> str:
    """Source of `forward` and `forward_backward` for a backend with a VJP table.

    `partial` names a function that handles calls giving gradients for only some
    outputs (None when `grad_edges` already is such a subset).
    """
    load, body = gen.load_lines(diagnose), gen.forward_lines()
    forward = forward_function(gen, diagnose)
    grad_names = [gen.fresh(f"g_{gen.names[e]}") for e in grad_edges]
    back, grads = gen.backward_lines(grad_edges, grad_names, zeros_like)
    head = (
        []
        if partial is None
        else [
            f"if len(output_gradients) != {len(grad_edges)}:",
            f"    return {partial}(params, inputs, output_gradients)",
        ]
    )
    internal = {gen.names[e] for e in gen.graph.edges if e.role == "internal"}
    temporaries = {name for line in back for name in _IDENT.findall(line.split("=", 1)[0])}
    keep = set(_IDENT.findall(grads)) | {gen.names[e] for e in gen.graph.outputs}
    freed = free_after_last_use([*body, "# backward", *back], internal | temporaries, keep)
    split = freed.index("# backward")
    body, back = freed[:split], freed[split + 1 :]
    checks = gen.grad_check_lines(grad_edges, grad_names, diagnose)
    forward_backward = function(
        "forward_backward",
        "params, inputs, output_gradients",
        [*head, *load, *body, *checks, *back, f"return {gen.outputs_expr()}, {grads}"],
    )
    return forward + "\n\n" + forward_backward


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
