"""An optimizer's rule on one-array lists as straight-line Python: the same expressions, without the dispatch.

On NumPy a rule runs on joined (flat) arrays, about a dozen ufunc calls, and the `Foreach`
dispatch around them (method calls, one-element list comprehensions, scalar checks) cost
as much again. `trace_rule` runs the rule once on symbols through the very same
`NamespaceForeach` methods and writes down each operation as a line of code, so the
generated function evaluates exactly the expressions the eager rule would, in the same
order: bit-identical results. What depends on runtime types (`ops.scalar`) is called at
runtime. A rule that branches on traced values, compares them, reads array attributes or
calls other functions on them is not traceable: `trace_rule` returns None and the rule
runs eagerly (a rule runs once more while being traced, so it should have no side effects).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .foreach import NamespaceForeach

if TYPE_CHECKING:
    from .base import Optimizer

__all__ = ["TracedRule", "trace_rule"]

# (params, grads, *one array per slot, step, lr) -> (new params list, {slot: new state list})
TracedRule = Callable[..., tuple[list[Any], dict[str, list[Any]]]]


class _Untraceable(Exception):
    """The rule did something a straight-line trace cannot record."""


class _Recorder:
    """The lines of the generated function, and the constants its code names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}

    def operand(self, value: Any) -> str:
        """The code for `value`: a symbol's name, or a constant bound in the function's namespace."""
        if isinstance(value, _Symbol):
            if value.recorder is not self:
                raise _Untraceable("a symbol from another trace")
            return value.name
        if isinstance(value, (list, tuple, dict)):
            raise _Untraceable(f"a {type(value).__name__} operand")
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, code: str) -> _Symbol:
        """Bind `code` to a new variable: each value is computed once, as the eager rule computes it."""
        name = f"t{len(self.lines)}"
        self.lines.append(f"    {name} = {code}")
        return _Symbol(name, self)


def _operators(symbol: str) -> tuple[Callable[[_Symbol, Any], _Symbol], Callable[[_Symbol, Any], _Symbol]]:
    """A binary operator's method and its reflected form (`other <symbol> self`), recording one line each call."""

    def method(self: _Symbol, other: Any) -> _Symbol:
        return self.recorder.emit(f"{self.name} {symbol} {self.recorder.operand(other)}")

    def reflected(self: _Symbol, other: Any) -> _Symbol:
        return self.recorder.emit(f"{self.recorder.operand(other)} {symbol} {self.name}")

    return method, reflected


class _Symbol:
    """A value of the traced rule (an array or a runtime scalar): Python's arithmetic records a line."""

    __slots__ = ("name", "recorder")

    def __init__(self, name: str, recorder: _Recorder) -> None:
        self.name, self.recorder = name, recorder

    __add__, __radd__ = _operators("+")
    __sub__, __rsub__ = _operators("-")
    __mul__, __rmul__ = _operators("*")
    __truediv__, __rtruediv__ = _operators("/")
    __pow__, __rpow__ = _operators("**")

    def __neg__(self) -> _Symbol:
        return self.recorder.emit(f"-{self.name}")

    def _refuse(self, *_: Any) -> Any:
        raise _Untraceable("a comparison or truth test of a traced value")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __bool__ = __index__ = __float__ = __int__ = _refuse
    __hash__ = object.__hash__

    def __getattr__(self, name: str) -> Any:
        raise _Untraceable(f"attribute {name!r} of a traced value")


class _RecordingModule:
    """Stands in for the array module: `xp.sqrt(x)` and the like record a call of the real module's function."""

    def __init__(self, recorder: _Recorder, runtime: Any) -> None:
        self._recorder, self._runtime = recorder, runtime

    def __getattr__(self, name: str) -> Callable[..., _Symbol]:
        recorder, function = self._recorder, getattr(self._runtime, name)

        def call(*args: Any, **kwargs: Any) -> _Symbol:
            code = [recorder.operand(a) for a in args] + [f"{k}={recorder.operand(v)}" for k, v in kwargs.items()]
            return recorder.emit(f"{recorder.operand(function)}({', '.join(code)})")

        return call


class _TracingForeach(NamespaceForeach):
    """NamespaceForeach's own methods on symbols; what depends on runtime types is called at runtime."""

    def __init__(self, recorder: _Recorder, runtime: NamespaceForeach) -> None:
        super().__init__(_RecordingModule(recorder, runtime.xp))
        self.recorder, self.runtime = recorder, runtime

    def scalar(self, value: Any, like: Any) -> Any:
        if not isinstance(value, _Symbol):
            return super().scalar(value, like)  # a Python number stays as it is
        r = self.recorder
        return r.emit(f"{r.operand(self.runtime.scalar)}({r.operand(value)}, {r.operand(like)})")

    def where(self, cond: Any, xs: Sequence[Any], ys: Sequence[Any]) -> list[Any]:
        if isinstance(cond, bool):
            return super().where(cond, xs, ys)
        raise _Untraceable("a selection on a traced condition")


def trace_rule(optimizer: Optimizer, ops: NamespaceForeach) -> TracedRule | None:
    """`optimizer.rule` on one-array lists as generated code running `ops`'s math, or None if not traceable."""
    recorder = _Recorder()
    slots = tuple(optimizer.slots)
    inputs = ["params", "grads", *(f"state{i}" for i in range(len(slots))), "step", "lr"]
    symbols = {name: _Symbol(name, recorder) for name in inputs}
    try:
        new_params, new_state = optimizer.rule(
            [symbols["params"]],
            [symbols["grads"]],
            {slot: [symbols[f"state{i}"]] for i, slot in enumerate(slots)},
            symbols["step"],
            symbols["lr"],
            _TracingForeach(recorder, ops),
        )
        outputs = _output_code(recorder, new_params, new_state, slots)
    except Exception:  # noqa: BLE001 - anything a symbol cannot stand in for: the eager rule runs (and raises)
        return None
    source = "\n".join([f"def traced_rule({', '.join(inputs)}):", *recorder.lines, f"    return {outputs}"])
    namespace: dict[str, Any] = dict(recorder.constants)
    exec(compile(source, f"<mithril-optim-{type(optimizer).__name__}>", "exec"), namespace)  # noqa: S102
    rule: TracedRule = namespace["traced_rule"]
    return rule


def _output_code(recorder: _Recorder, new_params: Any, new_state: Any, slots: Sequence[str]) -> str:
    """`return`'s expression for the rule's (new params, {slot: new state}), all traced one-array lists."""

    def one(values: Any) -> str:
        if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], _Symbol):
            raise _Untraceable("an output that is not a traced one-array list")
        return f"[{recorder.operand(values[0])}]"

    if not isinstance(new_state, dict) or set(new_state) != set(slots):
        raise _Untraceable("a state whose slots differ from the optimizer's")
    state = ", ".join(f"{slot!r}: {one(new_state[slot])}" for slot in slots)
    return f"{one(new_params)}, {{{state}}}"
