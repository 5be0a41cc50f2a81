"""The logical model algebra: connections, leaf operators, composite models, `|=` and `+=`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union

from ..errors import CompositionError, DTypeMismatchError, KeyNotFoundError, ShapeError
from ..shapes import Constraint, Renderer, Shape, ShapeMismatch, Transaction, instantiate, unify

if TYPE_CHECKING:
    from ..primitives.declaration import Primitive, ShapeRule

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


_M = TypeVar("_M", bound="BaseModel")


class BaseModel:
    """Common interface of operators and composite models."""

    canonical_input: str | None = "input"
    canonical_output: str | None = "output"
    init_args: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls: type[_M], *args: Any, **kwargs: Any) -> _M:
        """Record the constructor arguments: `mithril.serialization` rebuilds a layer from them."""
        model = super().__new__(cls)
        model.init_args = (args, kwargs)  # `**kwargs` is a fresh dict on every call
        return model

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
    """A leaf model that lowers to one primitive, declared in `mithril.primitives`.

    The declaration supplies the shape template and rule, the outputs, the state updates
    and the inference form; `inputs` says which of its inputs are present and their roles
    (data, trainable parameter or state) and initialisation; `sizes` fixes named dimensions.
    """

    def __init__(
        self,
        primitive: str,
        inputs: Mapping[str, KeySpec] | None = None,
        *,
        sizes: Mapping[str, int | None] | None = None,
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        from ..primitives.declaration import get  # noqa: PLC0415 - the declarations import this module

        super().__init__(name)
        decl = get(primitive)
        self.primitive = primitive
        self.attrs: dict[str, Any] = {**decl.attrs, **attrs} if attrs else dict(decl.attrs)
        self.input_specs: dict[str, KeySpec] = dict(_default_inputs(decl) if inputs is None else inputs)
        self.output_kinds: dict[str, str] = dict(decl.outputs)
        # output key -> the state input key it holds the new value of (training mode only)
        self.state_updates: dict[str, str] = {}
        if decl.state_updates:
            self.state_updates = {out: key for out, key in decl.state_updates.items() if key in self.input_specs}
            if not self.state_updates:
                self.output_kinds = {k: v for k, v in self.output_kinds.items() if k not in decl.state_updates}
        # (primitive, input keys it keeps) used when compiling with inference=True; the inference
        # form produces only the canonical output
        self.inference: tuple[str, tuple[str, ...]] | None = None
        if decl.inference is not None and (self.state_updates or not decl.state_updates):
            kept = tuple(k for k in get(decl.inference).input_names if k in self.input_specs)
            self.inference = (decl.inference, kept)
        self.rule = decl.rule
        keys = [*self.input_specs, *self.output_kinds]
        shapes = instantiate(decl.shape_template(self.attrs), sizes or {}, keys)
        self._keys: dict[str, Connection] = {}
        for key, spec in self.input_specs.items():
            self._keys[key] = Connection(self, shapes[key], spec.kind, key)
        for key, kind in self.output_kinds.items():
            conn = Connection(self, shapes[key], kind, key)
            conn.producer = (self, key)
            self._keys[key] = conn
        self.canonical_input = next(iter(self.input_specs), None)
        self.canonical_output = next(iter(self.output_kinds), None)
        if self.rule is not None:
            with Transaction() as tx:
                self.attach_rule({k: c.shape for k, c in self._keys.items()})
                tx.propagate()

    def attach_rule(self, shapes: dict[str, Shape]) -> None:
        """Register this operator's shape rule on `shapes` (its own, or compile-time copies)."""
        if self.rule is None:
            return
        constraint = Constraint(_RuleCheck(self, self.rule, shapes), self.describe)
        constraint.watch(shapes.values())
        constraint.schedule()

    def external_keys(self) -> dict[str, Connection]:
        return self._keys

    def attr_text(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.attrs.items() if not k.startswith("_"))


_DEFAULT_INPUTS: dict[Primitive, dict[str, KeySpec]] = {}


def _default_inputs(decl: Primitive) -> dict[str, KeySpec]:
    """An operator's inputs when its layer names none: the declaration's required ports, as data (made once)."""
    found = _DEFAULT_INPUTS.get(decl)
    if found is None:
        found = _DEFAULT_INPUTS[decl] = {p.name: KeySpec(kind=p.kind) for p in decl.inputs if not p.optional}
    return found


class _RuleCheck:
    """An operator's shape rule bound to its shapes; a class, not a closure, so that models pickle."""

    __slots__ = ("op", "rule", "shapes")

    def __init__(self, op: Operator, rule: ShapeRule, shapes: dict[str, Shape]) -> None:
        self.op = op
        self.rule = rule
        self.shapes = shapes

    def __call__(self) -> bool:
        try:
            return self.rule(self.shapes, self.op.attrs)
        except ShapeMismatch as exc:
            render = Renderer()
            given = ", ".join(f"{k}={render(s.items)}" for k, s in self.shapes.items())
            raise ShapeError(f"{self.op.describe()}: {exc} (shapes: {given})") from None


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
        # per child, in order: "|=" or "+=" and the names it was called with (replayed by ml.load_model)
        self.composition: list[tuple[str, dict[str, str]]] = []

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
        op = "+=" if chain else "|="
        call = other if isinstance(other, Call) else Call(other, {}) if isinstance(other, BaseModel) else None
        if call is None:
            raise TypeError(f"{self.describe()} {op}: expected a model or a called model, got {other!r}")
        child, mapping = call.model, call.mapping
        self._check_child(child)
        child_keys = child.external_keys()
        plan = self._plan_links(child, child_keys, mapping, chain)
        self._check_producers_and_cycles(child, child_keys, plan, op)
        with Transaction() as tx:
            self._unify_links(child, child_keys, plan)
            try:
                tx.propagate()
            except (ShapeError, ShapeMismatch) as exc:  # ShapeMismatch: a deferred unification failed
                links = {k: self._label(t) if isinstance(t, Connection) else t for k, t in plan.items()}
                named = ", ".join(f"{k}->{v!r}" for k, v in links.items() if v is not None)
                raise ShapeError(f"{self.describe()} {op} {child.describe()} (links {named}): {exc}") from None
        self._commit(child, child_keys, plan)
        self.composition.append((op, dict(mapping)))

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
        self._share_aliases(child, child_keys, mapping, plan)
        return plan

    def _share_aliases(
        self,
        child: BaseModel,
        child_keys: dict[str, Connection],
        mapping: dict[str, str],
        plan: dict[str, Connection | str | None],
    ) -> None:
        """Give keys naming one connection of `child` (a named key and its alias 'input') a single target."""
        groups: dict[Connection, list[str]] = {}
        for key, inner in child_keys.items():
            groups.setdefault(inner, []).append(key)
        if len(groups) == len(child_keys):  # no connection has two keys (always so for an operator)
            return
        for keys in groups.values():
            named = {mapping[k]: k for k in keys if k in mapping}
            if len(named) > 1:
                raise CompositionError(
                    f"{self.describe()}: keys {keys} of {child.describe()} are one connection, but they are "
                    f"connected to different names {sorted(named)}"
                )
            chosen = next(iter(named.values()), next((k for k in keys if k in plan), None))
            if chosen is not None:
                for key in keys:
                    plan[key] = plan[chosen]

    def _check_producers_and_cycles(
        self,
        child: BaseModel,
        child_keys: dict[str, Connection],
        plan: dict[str, Connection | str | None],
        op: str,
    ) -> None:
        """Refuse a second producer for a connection, and any cycle the child would close (length 1 or more)."""
        produced: dict[Connection | str, str] = {}  # target -> the child's key producing it
        consumed: dict[Connection | str, str] = {}  # target -> a child key taking it as input
        for key, target in plan.items():
            if target is None:
                continue
            inner = child_keys[key]
            if inner.producer is None:
                consumed.setdefault(target, key)
                continue
            other = produced.get(target)
            if other is not None and child_keys[other] is not inner:
                raise CompositionError(
                    f"{self.describe()} {op} {child.describe()}: keys {other!r} and {key!r} are both outputs "
                    f"connected to {self._target_label(target)!r}; a connection has one producer"
                )
            produced.setdefault(target, key)
            if isinstance(target, Connection) and target.producer is not None:
                producer, pkey = target.producer
                raise CompositionError(
                    f"{self.describe()}: key {self._label(target)!r} would have two producers: "
                    f"{producer.describe()} (key {pkey!r}) and {child.describe()} (key {key!r})"
                )
        for target, out_key in produced.items():
            if target in consumed:  # the child's output feeds its own input directly
                name = self._target_label(target)
                raise CompositionError(
                    f"{self.describe()} {op} {child.describe()}: this would create a cycle: its output "
                    f"{out_key!r} and its input {consumed[target]!r} are both connected to {name!r} "
                    f"({name} -> {child.describe()} -> {name})"
                )
        starts = [t for t in produced if isinstance(t, Connection)]
        paths = self._downstream(starts)
        for target, in_key in consumed.items():
            if isinstance(target, Connection) and target in paths:
                labels = [self._label(c) for c in paths[target]]
                raise CompositionError(
                    f"{self.describe()} {op} {child.describe()}: this would create a cycle: its input {in_key!r} "
                    f"({labels[-1]!r}) depends on its own output ({labels[0]!r}) through keys "
                    f"{' -> '.join(labels)} -> {child.describe()} -> {labels[0]}"
                )

    def _downstream(self, starts: list[Connection]) -> dict[Connection, list[Connection]]:
        """Every connection computed from `starts`, with the path of connections that leads to it."""
        paths: dict[Connection, list[Connection]] = {}
        stack = [(conn, [conn]) for conn in starts]
        while stack:
            conn, path = stack.pop()
            if conn in paths:
                continue
            paths[conn] = path
            for consumer, _ in conn.consumers:
                produced = consumer.external_keys()
                for key, link in consumer.links.items():
                    if produced[key].producer is not None:
                        stack.append((link, [*path, link]))
        return paths

    def _target_label(self, target: Connection | str) -> str:
        """The name of a planned link: an existing connection's label, or the new name."""
        return self._label(target) if isinstance(target, Connection) else target

    def _unify_links(
        self, child: BaseModel, child_keys: dict[str, Connection], plan: dict[str, Connection | str | None]
    ) -> None:
        """Unify each child key with its target; keys sharing a new name are unified with each other."""
        first: dict[str, tuple[Connection, str]] = {}  # new name -> the first child key given it
        for key, target in plan.items():
            inner = child_keys[key]
            if target is None:
                continue
            if isinstance(target, str):
                conn, first_key = first.setdefault(target, (inner, key))
                if conn is inner:
                    continue
            else:
                conn = target
            if "any" not in (inner.kind, conn.kind) and inner.kind != conn.kind:
                label, origin = self._link_label(child, target, first)
                raise DTypeMismatchError(
                    f"{self.describe()}: {child.describe()} key {key!r} expects {inner.kind} values "
                    f"but {label!r} carries {conn.kind} values ({origin})"
                )
            trail = Transaction.current().trail
            mark = len(trail)
            try:
                unify(conn.shape.items, inner.shape.items)
            except ShapeMismatch as exc:
                for obj, attr, old in reversed(trail[mark:]):  # undo this key's partial unification only, so
                    setattr(obj, attr, old)  # the shapes show what the keys linked before it implied
                del trail[mark:]
                label, origin = self._link_label(child, target, first)
                render = Renderer()
                expected, given = render(inner.shape.items), render(conn.shape.items)
                raise ShapeError(
                    f"{self.describe()}: shape mismatch at key {label!r}: {child.describe()} key {key!r} "
                    f"expects {expected}, but {label!r} has shape {given} ({origin}; {exc})"
                ) from None

    def _link_label(
        self, child: BaseModel, target: Connection | str, first: dict[str, tuple[Connection, str]]
    ) -> tuple[str, str]:
        """The name of a link `_unify_links` refuses and where its shape came from (made only for the message)."""
        if isinstance(target, str):
            return target, f"given to {child.describe()} key {first[target][1]!r} too"
        return self._label(target), self._origin(target)

    def _origin(self, conn: Connection) -> str:
        """Which model gave one of this model's connections its shape: its producer, else its first consumer."""
        if conn.producer is not None:
            model, key = conn.producer
            return f"produced by {model.describe()} key {key!r}"
        if conn.consumers:
            model, key = conn.consumers[0]
            return f"taken as input by {model.describe()} key {key!r}"
        return f"an input of {self.describe()}"

    def _commit(
        self, child: BaseModel, child_keys: dict[str, Connection], plan: dict[str, Connection | str | None]
    ) -> None:
        cls = type(child).__name__.lower()
        index = self._counters.get(cls, 0)
        self._counters[cls] = index + 1
        child.local_name = child.name or f"{cls}_{index}"
        child.parent = self
        self.children.append(child)
        created: dict[Connection | str, Connection] = {}  # new name, or child connection left anonymous
        for key, target in plan.items():
            inner = child_keys[key]
            if not isinstance(target, Connection):
                ident: Connection | str = inner if target is None else target
                conn = created.get(ident)
                if conn is None:
                    conn = created[ident] = Connection(self, inner.shape, inner.kind, target)
                    self.connections.append(conn)
                    if target is not None:
                        self.named[target] = conn
                target = conn
            elif target.kind == "any":
                target.kind = inner.kind
            child.links[key] = target
            if inner.producer is None:
                target.consumers.append((child, key))
            elif target.producer is None:  # the first of a connection's keys names its producer
                target.producer = (child, key)
        cin = child.links.get(child.canonical_input) if child.canonical_input is not None else None
        if self.cin is None and cin is not None and cin in created.values():
            self.cin = cin
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
