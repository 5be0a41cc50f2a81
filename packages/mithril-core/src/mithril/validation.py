"""Diagnosis of bad `evaluate` arguments: called only once the fast checks have failed."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .backend import Backend
from .errors import DTypeMismatchError, KeyNotFoundError, NoFaultFound, ShapeError
from .graph import Edge, Graph
from .shapes import Dim, Renderer, Var, resolve

__all__ = ["make_diagnose"]


def make_diagnose(graph: Graph, backend: Backend) -> Callable[..., NoReturn]:
    """Build the function generated code calls to explain, precisely, what is wrong."""
    owner = graph.model.describe()
    groups = {"params": graph.params, "inputs": graph.inputs}
    role_of = {e.name: group for group, edges in groups.items() for e in edges}

    def check_keys(group: str, given: Any, expected: list[Edge]) -> None:
        if not isinstance(given, Mapping):
            raise TypeError(f"{owner}: {group} must be a dict keyed by name, got {type(given).__name__}")
        names = [e.name for e in expected]
        for name in names:
            if name not in given:
                extra = [k for k in given if k not in names]
                close = difflib.get_close_matches(str(name), [str(k) for k in extra], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KeyNotFoundError(f"{owner}: {group} is missing key {name!r}{hint}; expected keys {names}")
        for key in given:
            if key not in names:
                where = role_of.get(key)
                hint = f"; {key!r} belongs in {where}" if where else ""
                raise KeyNotFoundError(f"{owner}: unknown key {key!r} in {group}{hint}; expected keys {names}")

    def check_value(group: str, edge: Edge, value: Any, bound: dict[int, int]) -> None:
        label = f"{owner}: {group}[{edge.name!r}]"
        if not backend.is_array(value):
            raise TypeError(f"{label}: expected an array of backend {backend.name!r}, got {type(value).__name__}")
        given = tuple(int(d) for d in value.shape)
        render = Renderer()
        expected_text = render(edge.shape.items)
        if not _fits(resolve(edge.shape.items), given, bound):
            raise ShapeError(f"{label}: expected shape {expected_text}, got {list(given)}")
        if edge.kind == "float":
            dtype = backend.dtype_of(value)
            if dtype is not backend.dtype:
                name = dtype.name if dtype is not None else str(getattr(value, "dtype", "?"))
                raise DTypeMismatchError(
                    f"{label}: expected dtype {backend.dtype.name} (the backend's dtype), got {name}"
                )
        problem = backend.array_problem(value)
        if problem is not None:
            raise ValueError(f"{label}: {problem}")

    def diagnose(
        params: Any, inputs: Any, output_gradients: Any = None, outputs: Mapping[str, Any] | None = None
    ) -> NoReturn:
        bound: dict[int, int] = {}
        check_keys("params", params, graph.params)
        check_keys("inputs", inputs, graph.inputs)
        for group, edges in groups.items():
            given = params if group == "params" else inputs
            for edge in edges:
                check_value(group, edge, given[edge.name], bound)
        if output_gradients is not None and outputs is not None:
            expected = [e for e in graph.outputs if e.updates is None]
            if not isinstance(output_gradients, Mapping):
                raise TypeError(f"{owner}: output_gradients must be a dict keyed by output name")
            for key in output_gradients:
                if key not in outputs:
                    raise KeyNotFoundError(
                        f"{owner}: output_gradients has unknown key {key!r}; outputs are {[e.name for e in expected]}"
                    )
            for key, grad in output_gradients.items():
                if not backend.is_array(grad):
                    raise TypeError(f"{owner}: output_gradients[{key!r}]: expected an array, got {type(grad).__name__}")
                want, got = tuple(outputs[key].shape), tuple(grad.shape)
                if tuple(int(d) for d in want) != tuple(int(d) for d in got):
                    raise ShapeError(
                        f"{owner}: output_gradients[{key!r}]: expected shape {list(want)} "
                        f"(the shape of output {key!r}), got {list(got)}"
                    )
                want_dtype, got_dtype = backend.dtype_of(outputs[key]), backend.dtype_of(grad)
                if want_dtype is not None and got_dtype is not want_dtype:
                    raise DTypeMismatchError(
                        f"{owner}: output_gradients[{key!r}]: expected dtype {want_dtype.name} "
                        f"(the dtype of output {key!r}), got {got_dtype.name if got_dtype else grad.dtype}"
                    )
        raise NoFaultFound(f"{owner}: evaluate rejected its arguments but no specific fault was found")

    return diagnose


def _fits(items: list[Dim | Var], given: tuple[int, ...], bound: dict[int, int]) -> bool:
    var_at = next((i for i, it in enumerate(items) if isinstance(it, Var)), -1)
    if var_at < 0:
        if len(items) != len(given):
            return False
        pairs = list(zip(items, given))
    else:
        pre, suf = items[:var_at], items[var_at + 1 :]
        if len(given) < len(pre) + len(suf):
            return False
        pairs = list(zip(pre, given[: len(pre)])) + list(zip(suf, given[len(given) - len(suf) :]))
    for item, size in pairs:
        assert isinstance(item, Dim)
        if item.value is not None:
            if item.value != size:
                return False
        elif bound.setdefault(id(item), size) != size:
            return False
    return True
