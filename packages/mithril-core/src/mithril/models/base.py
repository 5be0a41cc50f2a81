"""The logical model algebra: connections, leaf operators, composite models, `|=` and `+=`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import CompositionError, DTypeMismatchError, KeyNotFoundError, ShapeError
from ..shapes import Constraint, Renderer, Shape, ShapeMismatch, Transaction, instantiate, unify

__all__ = ["Init", "KeySpec", "Connection", "BaseModel", "Operator", "Model", "Call"]


@dataclass(frozen=True)
class Init:
    """How a parameter is initialised: PyTorch's defaults are expressed with these kinds.

    kinds: "fan_in_uniform" (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in taken from the
    shape of key `of`, or of the parameter itself) which is what PyTorch's
    kaiming_uniform_(a=sqrt(5)) reduces to; "ones"; "zeros"; "normal" (N(0, 1)).
    """

    kind: str
    of: str | None = None


@dataclass(frozen=True)
class KeySpec:
    """One input key of an operator: its role, element kind and, for parameters, its init."""

    role: str = "input"  # "input" (data), "param" (trainable) or "state" (e.g. running statistics)
    kind: str = "float"  # "float", "int" or "any"
    init: Init | None = None


class Connection:
    """A named or anonymous edge inside one model; it has at most one producer."""

    __slots__ = ("name", "shape", "kind", "producer", "consumers", "owner")

    def __init__(self, owner: BaseModel, shape: Shape, kind: str, name: str | None = None) -> None:
        self.owner = owner
        self.name = name
        self.shape = shape
        self.kind = kind
        self.producer: tuple[BaseModel, str] | None = None
        self.consumers: list[tuple[BaseModel, str]] = []

    def __repr__(self) -> str:
        return f"Connection({self.name or '<anonymous>'}, {self.shape})"


@dataclass
class Call:
    """A model together with the connection names given by calling it: `Linear(4)(input="x")`."""

    model: BaseModel
    mapping: dict[str, str] = field(default_factory=dict)


class BaseModel:
    """Common interface of operators and composite models."""

    canonical_input: str | None = "input"
    canonical_output: str | None = "output"

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a str, got {name!r}")
        self.name = name
        self.parent: Model | None = None
        self.local_name: str | None = None
        self.links: dict[str, Connection] = {}  # my external key -> connection in my parent

    def __call__(self, **mapping: str) -> Call:
        keys = self.external_keys()
        for key, value in mapping.items():
            if key not in keys:
                raise KeyNotFoundError(f"{self.describe()} has no key {key!r}; its keys are {sorted(keys)}")
            if not isinstance(value, str) or not value:
                raise TypeError(
                    f"{self.describe()} key {key!r}: connect it by giving a non-empty name (str), got {value!r}"
                )
        return Call(self, dict(mapping))

    def external_keys(self) -> dict[str, Connection]:
        raise NotImplementedError

    def is_output(self, key: str) -> bool:
        return self.external_keys()[key].producer is not None

    def attr_text(self) -> str:
        return ""

    def describe(self) -> str:
        label = self.local_name or self.name
        text = type(self).__name__
        attrs = self.attr_text()
        if attrs:
            text += f"({attrs})"
        return f"{text} '{label}'" if label else text


class Operator(BaseModel):
    """A leaf model that lowers to one backend primitive."""

    def __init__(
        self,
        primitive: str,
        inputs: Mapping[str, KeySpec],
        template: Mapping[str, Sequence[Any]],
        *,
        sizes: Mapping[str, int | None] | None = None,
        attrs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, str] | None = None,
        rule: Callable[[dict[str, Shape], Mapping[str, Any]], bool] | None = None,
        state_updates: Mapping[str, str] | None = None,
        inference: tuple[str, Sequence[str]] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.primitive = primitive
        # output key -> the state input key it holds the new value of (training mode only)
        self.state_updates: dict[str, str] = dict(state_updates or {})
        # (primitive, input keys it keeps) used when compiling with inference=True; the inference
        # form produces only the canonical output
        self.inference = inference
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.input_specs: dict[str, KeySpec] = dict(inputs)
        self.output_kinds: dict[str, str] = dict(outputs or {"output": "float"})
        self.rule = rule
        shapes = instantiate(template, sizes or {})
        self._keys: dict[str, Connection] = {}
        for key, spec in self.input_specs.items():
            self._keys[key] = Connection(self, shapes[key], spec.kind, key)
        for key, kind in self.output_kinds.items():
            conn = Connection(self, shapes[key], kind, key)
            conn.producer = (self, key)
            self._keys[key] = conn
        self.canonical_input = next(iter(self.input_specs), None)
        self.canonical_output = next(iter(self.output_kinds), None)
        if rule is not None:
            with Transaction() as tx:
                self.attach_rule({k: c.shape for k, c in self._keys.items()})
                tx.propagate()

    def attach_rule(self, shapes: dict[str, Shape]) -> None:
        """Register this operator's shape rule on `shapes` (its own, or compile-time copies)."""
        if self.rule is None:
            return
        rule, attrs = self.rule, self.attrs

        def run() -> bool:
            try:
                return rule(shapes, attrs)
            except ShapeMismatch as exc:
                render = Renderer()
                given = ", ".join(f"{k}={render(s.items)}" for k, s in shapes.items())
                raise ShapeError(f"{self.describe()}: {exc} (shapes: {given})") from None

        constraint = Constraint(run, self.describe())
        constraint.watch(shapes.values())
        constraint.schedule()

    def external_keys(self) -> dict[str, Connection]:
        return self._keys

    def attr_text(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.attrs.items() if not k.startswith("_"))


ModelLike = Union[BaseModel, Call]


class Model(BaseModel):
    """A composite model: children joined by connections.

    `m |= child` adds a child (its canonical input becomes `m`'s `input` when `m` is
    empty); `m += child` chains it (its canonical input takes `m`'s current canonical
    output). Calling a child with names, `child(input="a", output="b")`, links keys
    that share a name.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.children: list[BaseModel] = []
        self.named: dict[str, Connection] = {}
        self.connections: list[Connection] = []
        self.cin: Connection | None = None
        self.cout: Connection | None = None
        self._counters: dict[str, int] = {}

    # -- composition -------------------------------------------------------------
    def __ior__(self, other: ModelLike) -> Model:
        self._add(other, chain=False)
        return self

    def __iadd__(self, other: ModelLike) -> Model:
        self._add(other, chain=True)
        return self

    def external_keys(self) -> dict[str, Connection]:
        keys = dict(self.named)
        if self.cin is not None:
            keys.setdefault("input", self.cin)
        if self.cout is not None:
            keys.setdefault("output", self.cout)
        return keys

    def _add(self, other: ModelLike, chain: bool) -> None:
        call = other if isinstance(other, Call) else Call(other, {}) if isinstance(other, BaseModel) else None
        if call is None:
            op = "+=" if chain else "|="
            raise TypeError(f"{self.describe()} {op}: expected a model or a called model, got {other!r}")
        child, mapping = call.model, call.mapping
        self._check_child(child)
        child_keys = child.external_keys()
        plan = self._plan_links(child, child_keys, mapping, chain)
        self._check_producers_and_cycles(child, child_keys, plan)
        with Transaction() as tx:
            self._unify_links(child, child_keys, plan)
            try:
                tx.propagate()
            except ShapeError as exc:
                links = {k: self._label(t) if isinstance(t, Connection) else t for k, t in plan.items()}
                named = ", ".join(f"{k}->{v!r}" for k, v in links.items() if v is not None)
                op = "+=" if chain else "|="
                raise ShapeError(f"{self.describe()} {op} {child.describe()} (links {named}): {exc}") from None
        self._commit(child, child_keys, plan)

    def _check_child(self, child: BaseModel) -> None:
        if child is self:
            raise CompositionError(f"{self.describe()} cannot be added to itself")
        if child.parent is not None:
            raise CompositionError(
                f"{child.describe()} is already part of {child.parent.describe()}; "
                "create a new instance to add another layer of the same kind"
            )
        if isinstance(child, Model):
            node: Model | None = self
            while node is not None:
                if node is child:
                    raise CompositionError(f"{child.describe()} cannot contain itself")
                node = node.parent

    def _plan_links(
        self, child: BaseModel, child_keys: dict[str, Connection], mapping: dict[str, str], chain: bool
    ) -> dict[str, Connection | str | None]:
        """Decide, per child key, an existing connection, a new name (str) or anonymous (None)."""
        plan: dict[str, Connection | str | None] = {}
        cin_key = child.canonical_input if child.canonical_input in child_keys else None
        for key in child_keys:
            if key in mapping:
                name = mapping[key]
                existing = self.named.get(name)
                if existing is None and name == "input" and self.cin is not None and self.cin.name is None:
                    existing = self.cin
                if existing is None and chain and key == cin_key:
                    known = sorted(self.external_keys())
                    raise CompositionError(
                        f"{self.describe()} += {child.describe()}: input {key!r} is connected to "
                        f"{name!r}, which nothing in {self.describe()} produces or takes as input; "
                        f"known keys: {known}"
                    )
                plan[key] = existing if existing is not None else name
            elif key == cin_key and chain and self.cout is not None:
                plan[key] = self.cout
            elif key == cin_key and self.cin is None:
                plan[key] = self.named.get("input", "input")
            elif key in (child.canonical_input, child.canonical_output) or not isinstance(child, Model):
                plan[key] = None
        return plan

    def _check_producers_and_cycles(
        self, child: BaseModel, child_keys: dict[str, Connection], plan: dict[str, Connection | str | None]
    ) -> None:
        targets: list[Connection] = []
        sources: list[Connection] = []
        for key, target in plan.items():
            if not isinstance(target, Connection):
                continue
            if child_keys[key].producer is not None:
                if target.producer is not None:
                    producer, pkey = target.producer
                    raise CompositionError(
                        f"{self.describe()}: key {self._label(target)!r} would have two producers: "
                        f"{producer.describe()} (key {pkey!r}) and {child.describe()} (key {key!r})"
                    )
                targets.append(target)
            else:
                sources.append(target)
        if targets and sources:
            reachable = self._downstream(targets)
            for source in sources:
                if source in reachable:
                    raise CompositionError(
                        f"{self.describe()} |= {child.describe()}: connecting it would create a cycle "
                        f"through key {self._label(source)!r}"
                    )

    def _downstream(self, starts: list[Connection]) -> set[Connection]:
        seen: set[Connection] = set()
        stack = list(starts)
        while stack:
            conn = stack.pop()
            if conn in seen:
                continue
            seen.add(conn)
            for consumer, _ in conn.consumers:
                for key, link in consumer.links.items():
                    if consumer.external_keys()[key].producer is not None:
                        stack.append(link)
        return seen

    def _unify_links(
        self, child: BaseModel, child_keys: dict[str, Connection], plan: dict[str, Connection | str | None]
    ) -> None:
        for key, target in plan.items():
            if not isinstance(target, Connection):
                continue
            inner = child_keys[key]
            if "any" not in (inner.kind, target.kind) and inner.kind != target.kind:
                raise DTypeMismatchError(
                    f"{self.describe()}: {child.describe()} key {key!r} expects {inner.kind} values "
                    f"but {self._label(target)!r} carries {target.kind} values"
                )
            try:
                unify(target.shape.items, inner.shape.items)
            except ShapeMismatch as exc:
                Transaction.current().rollback()  # render the shapes as they were before this step
                render = Renderer()
                expected, given = render(inner.shape.items), render(target.shape.items)
                raise ShapeError(
                    f"{self.describe()}: shape mismatch at key {self._label(target)!r}: "
                    f"{child.describe()} key {key!r} expects {expected}, but {self._label(target)!r} "
                    f"has shape {given} ({exc})"
                ) from None

    def _commit(
        self, child: BaseModel, child_keys: dict[str, Connection], plan: dict[str, Connection | str | None]
    ) -> None:
        cls = type(child).__name__.lower()
        index = self._counters.get(cls, 0)
        self._counters[cls] = index + 1
        child.local_name = child.name or f"{cls}_{index}"
        child.parent = self
        self.children.append(child)
        for key, target in plan.items():
            inner = child_keys[key]
            if not isinstance(target, Connection):
                conn = Connection(self, inner.shape, inner.kind, target)
                self.connections.append(conn)
                if target is not None:
                    self.named[target] = conn
                target = conn
                if key == child.canonical_input and self.cin is None:
                    self.cin = conn
            elif target.kind == "any":
                target.kind = inner.kind
            child.links[key] = target
            if inner.producer is not None:
                target.producer = (child, key)
            else:
                target.consumers.append((child, key))
        if child.canonical_output is not None and child.canonical_output in child.links:
            self.cout = child.links[child.canonical_output]

    def _label(self, conn: Connection) -> str:
        if conn.name is not None:
            return conn.name
        if conn is self.cin:
            return "input"
        if conn is self.cout:
            return "output"
        if conn.producer is not None:
            return f"{conn.producer[0].local_name}.{conn.producer[1]}"
        if conn.consumers:
            return f"{conn.consumers[0][0].local_name}.{conn.consumers[0][1]}"
        return "<anonymous>"

    # -- inspection --------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int | str, ...]]:
        """Symbolic shape of every key the compiled model would expose (inputs, params, outputs)."""
        from ..graph import flatten  # noqa: PLC0415 - graph imports this module

        graph = flatten(self, copy=False)
        render = Renderer()
        return {
            edge.name: tuple(int(t) if t.isdigit() else t for t in render.items(edge.shape.items))
            for edge in graph.edges
            if edge.role in ("input", "param", "output") or edge.user_named
        }

    def summary(self) -> str:
        """One line per parameter with its shape, then the inputs and outputs."""
        from ..graph import flatten  # noqa: PLC0415

        graph = flatten(self, copy=False)
        render = Renderer()
        lines = [f"{self.describe()}: {len(graph.nodes)} primitives"]
        for role in ("input", "param", "output"):
            for edge in graph.edges:
                if edge.role == role:
                    lines.append(f"  {role:<6} {edge.name:<32} {render(edge.shape.items)}")
        return "\n".join(lines)
