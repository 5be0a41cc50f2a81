"""Diagnosis of bad `evaluate` arguments: called only once the fast checks have failed."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from .backend import Backend
from .errors import DTypeMismatchError, IndexRangeError, KeyNotFoundError, NoFaultFound, ShapeError
from .graph import Edge, Graph
from .shapes import Dim, Renderer, Var, dim_values, resolve

__all__ = ["make_diagnose", "IndexCheck", "index_checks", "indices_in_range", "make_index_check"]


def make_diagnose(graph: Graph, backend: Backend) -> Callable[..., NoReturn]:
    """Build the function generated code calls to explain, precisely, what is wrong."""
    owner = graph.model.describe()
    groups = {"params": graph.params, "inputs": graph.inputs}
    role_of = {e.name: group for group, edges in groups.items() for e in edges}

    def _wanted(value: Any) -> str:
        """A wrong argument's type, and the array type the backend takes instead."""
        return f"{type(value).__name__} (pass a {backend.array_type}, e.g. from backend.array(...))"

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

    def check_value(group: str, edge: Edge, value: Any, bound: dict[int, int], binders: dict[int, str]) -> None:
        label = f"{owner}: {group}[{edge.name!r}]"
        if not backend.is_array(value):
            raise TypeError(f"{label}: expected an array of backend {backend.name!r}, got {_wanted(value)}")
        given = tuple(int(d) for d in value.shape)
        render = Renderer()
        expected_text = render(edge.shape.items)
        before = dict(bound)
        if not _fits(resolve(edge.shape.items), given, bound):
            shared = _bound_by(resolve(edge.shape.items), given, before, binders, render)
            raise ShapeError(f"{label}: expected shape {expected_text}, got {list(given)}{shared}")
        for item in resolve(edge.shape.items):
            if isinstance(item, Dim) and id(item) in bound:
                binders.setdefault(id(item), f"{group}[{edge.name!r}]")
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
        binders: dict[int, str] = {}  # symbolic dimension -> the argument that fixed its size in this call
        check_keys("params", params, graph.params)
        check_keys("inputs", inputs, graph.inputs)
        for group, edges in groups.items():
            given = params if group == "params" else inputs
            for edge in edges:
                check_value(group, edge, given[edge.name], bound, binders)
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
                label = f"{owner}: output_gradients[{key!r}]"
                if not backend.is_array(grad):
                    wanted = f"an array of backend {backend.name!r} like output {key!r}"
                    raise TypeError(f"{label}: expected {wanted}, got {_wanted(grad)}")
                want, got = tuple(outputs[key].shape), tuple(grad.shape)
                if tuple(int(d) for d in want) != tuple(int(d) for d in got):
                    raise ShapeError(
                        f"{owner}: output_gradients[{key!r}]: expected shape {list(want)} "
                        f"(the shape of output {key!r}), got {list(got)}"
                    )
                want_dtype, got_dtype = backend.dtype_of(outputs[key]), backend.dtype_of(grad)
                if want_dtype is not None and got_dtype is not want_dtype:
                    raise DTypeMismatchError(
                        f"{label}: expected dtype {want_dtype.name} "
                        f"(the dtype of output {key!r}), got {got_dtype.name if got_dtype else grad.dtype}"
                    )
                problem = backend.array_problem(grad)
                if problem is not None:
                    raise ValueError(f"{label}: {problem}")
        raise NoFaultFound(f"{owner}: evaluate rejected its arguments but no specific fault was found")

    return diagnose


def _bound_by(
    items: list[Dim | Var], given: tuple[int, ...], bound: dict[int, int], binders: dict[int, str], render: Renderer
) -> str:
    """Why a shape that fits its rank does not fit: a symbolic dimension another argument already sized."""
    var_at = next((i for i, it in enumerate(items) if isinstance(it, Var)), -1)
    if (var_at < 0 and len(items) != len(given)) or len(given) < len(items) - (var_at >= 0):
        return ""
    for i, item in enumerate(items):
        if not isinstance(item, Dim) or item.value is not None or id(item) not in bound or i == var_at:
            continue
        size = given[i] if var_at < 0 or i < var_at else given[i - len(items)]
        if size != bound[id(item)]:
            name = render.items([item])[0]
            return f" ({name} is {bound[id(item)]}, the size {binders.get(id(item), 'another argument')} gave it)"
    return ""


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


@dataclass(frozen=True)
class IndexCheck:
    """An integer input that indexes something: valid values are [0, bound) and `exempt`."""

    key: str
    bound: int
    exempt: int | None
    user: str  # the layer that reads it, for the message


def index_checks(graph: Graph) -> list[IndexCheck]:
    """The index inputs of a flat graph whose bound is known at compile time, from the declarations' ports."""
    from .primitives import get  # noqa: PLC0415 - the declarations import the models, which import this module

    checks = []
    for edge in graph.inputs:
        for node, key in edge.consumers:
            port = get(node.primitive).port(key)
            if port.index_of is None or edge.kind == "float":  # a float "any" input holds no indices
                continue
            source, axis = port.index_of
            dims = dim_values(node.inputs[source].shape.items) if source in node.inputs else None
            if not dims:
                continue
            if isinstance(axis, str):  # an attribute names the axis (gather's)
                axis = node.attrs[axis]
            axis = min(axis, len(dims) - 1)  # the class axis of [C] logits is their only one
            bound = dims[axis]
            if bound is None:
                continue
            exempt = node.attrs.get(port.index_exempt) if port.index_exempt else None
            checks.append(IndexCheck(edge.name, bound, exempt, node.path))
    return checks


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def indices_in_range(values: Any, bound: int) -> bool:
    """Whether every index of the NumPy integer array `values` lies in [0, bound) (so when it is empty): one
    reduction, since viewed as unsigned a negative index is larger than any bound."""
    unsigned = values.view(_UNSIGNED[values.itemsize]) if values.dtype.kind == "i" else values
    return not values.size or bool(np.maximum.reduce(unsigned, axis=None) < bound)


def make_index_check(graph: Graph, backend: Backend) -> Callable[[Any, IndexCheck], None]:
    """The function generated code calls on each index input: raises IndexRangeError naming key, value and range."""
    owner = graph.model.describe()

    def check(array: Any, spec: IndexCheck) -> None:
        values = np.asarray(backend.to_numpy(array))
        if values.dtype.kind not in "iu":
            raise DTypeMismatchError(
                f"{owner}: inputs[{spec.key!r}] holds indices for {spec.user!r}, which must be integers, "
                f"got dtype {values.dtype}"
            )
        if indices_in_range(values, spec.bound):
            return
        bad = (values < 0) | (values >= spec.bound)
        if spec.exempt is not None:
            bad &= values != spec.exempt
        if bad.any():
            value = int(values[bad].flat[0])
            allowed = f" (or {spec.exempt}, the ignore_index)" if spec.exempt is not None else ""
            raise IndexRangeError(
                f"{owner}: inputs[{spec.key!r}] holds index {value}, outside the valid range "
                f"[0, {spec.bound}){allowed} of {spec.user!r}"
            )

    return check
