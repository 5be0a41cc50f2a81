"""Symbolic shapes: dimensions, variadic dimension runs, unification and propagation.

A shape is a list of items; an item is a `Dim` (one dimension, an integer once known)
or a `Var` (a run of zero or more leading dimensions, written `...`).  Dimensions merge
through union-find; a `Var` binds to a list of items.  Primitive shape rules that
cannot be written as a template (broadcasting, convolution arithmetic) are
`Constraint`s that re-run whenever a dimension they watch changes.

Every mutation is recorded on the active `Transaction`, so a composition step that
fails leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

__all__ = [
    "Dim",
    "Var",
    "Item",
    "Shape",
    "Constraint",
    "Transaction",
    "ShapeMismatch",
    "resolve",
    "unify",
    "instantiate",
    "render",
    "Renderer",
    "copy_shapes",
    "DeferredUnify",
    "deferred_links",
    "dim_values",
]


class ShapeMismatch(Exception):
    """Low-level unification failure; callers add the model and key to the message."""


# The watchers of an unwatched item: one shared empty set (sets of watchers are replaced, never mutated),
# so that making a dimension allocates no set of its own.
_NO_WATCHERS: frozenset[Constraint] = frozenset()


class Dim:
    """One dimension: a union-find node whose root may carry a known integer."""

    __slots__ = ("parent", "value", "size", "watchers")

    def __init__(self, value: int | None = None) -> None:
        self.parent: Dim | None = None
        self.value = value
        self.size = 1
        self.watchers = _NO_WATCHERS

    def find(self) -> Dim:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def __repr__(self) -> str:
        root = self.find()
        return f"Dim({root.value})" if root.value is not None else f"Dim(?{id(root) % 997})"


class Var:
    """A run of leading dimensions of unknown length until it is bound."""

    __slots__ = ("binding", "watchers")

    def __init__(self) -> None:
        self.binding: list[Item] | None = None
        self.watchers = _NO_WATCHERS

    def __repr__(self) -> str:
        return "Var(...)" if self.binding is None else f"Var={self.binding!r}"


Item = Union[Dim, Var]


class Shape:
    """The shape of one connection: a mutable holder of a list of items."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = list(items)

    def resolved(self) -> list[Item]:
        return resolve(self.items)

    def __repr__(self) -> str:
        return render(self.items)


class Constraint:
    """A shape rule re-run when any item it watches changes; `fn` returns True when done.

    `label` names it; a function giving the name is called only when the name is read, so
    that making a constraint formats no text.
    """

    __slots__ = ("fn", "done", "_label")

    def __init__(self, fn: Callable[[], bool], label: str | Callable[[], str]) -> None:
        self.fn = fn
        self.done = False
        self._label = label

    @property
    def label(self) -> str:
        return self._label if isinstance(self._label, str) else self._label()

    def schedule(self) -> None:
        """Queue this constraint on the active transaction."""
        _active().queue.append(self)

    def watch(self, shapes: Iterable[Shape]) -> None:
        for shape in shapes:
            for item in shape.resolved():
                _add_watcher(item, self)


class Transaction:
    """Undo log plus work queue for one composition or compile step.

    Use as a context manager; an exception inside rolls every shape change back.
    """

    _stack: list[Transaction] = []

    def __init__(self) -> None:
        self.trail: list[tuple[object, str, object]] = []
        self.queue: list[Constraint] = []

    def __enter__(self) -> Transaction:
        Transaction._stack.append(self)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        Transaction._stack.pop()
        if exc_type is not None:
            self.rollback()

    @classmethod
    def current(cls) -> Transaction:
        """The innermost active transaction."""
        return _active()

    def rollback(self) -> None:
        for obj, attr, old in reversed(self.trail):
            setattr(obj, attr, old)
        self.trail.clear()
        self.queue.clear()

    def propagate(self) -> None:
        """Run queued constraints until none makes progress."""
        queue = self.queue
        while queue:
            constraint = queue.pop()
            if constraint.done:
                continue
            if constraint.fn():
                _set(constraint, "done", True)


def _active() -> Transaction:
    if not Transaction._stack:
        raise RuntimeError("shape mutation outside a Transaction")
    return Transaction._stack[-1]


def _set(obj: object, attr: str, value: object) -> None:
    tx = _active()
    tx.trail.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, value)


def _schedule(watchers: Iterable[Constraint]) -> None:
    queue = _active().queue
    queue.extend(c for c in watchers if not c.done)


def _add_watcher(item: Item, constraint: Constraint) -> None:
    target = item.find() if isinstance(item, Dim) else item
    if constraint not in target.watchers:
        _set(target, "watchers", target.watchers | {constraint})


def resolve(items: Sequence[Item]) -> list[Item]:
    """Expand bound variadics and replace each Dim by its union-find root."""
    out: list[Item] = []
    stack = [iter(items)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, Dim):
                out.append(item.find())
            elif item.binding is not None:
                stack.append(iter(item.binding))
                break
            else:
                out.append(item)
        else:
            stack.pop()
    return out


def _union(a: Dim, b: Dim) -> None:
    ra, rb = a.find(), b.find()
    if ra is rb:
        return
    if ra.value is not None and rb.value is not None and ra.value != rb.value:
        raise ShapeMismatch(f"{ra.value} != {rb.value}")
    if ra.size < rb.size:
        ra, rb = rb, ra
    informative = bool(ra.watchers) and bool(rb.watchers)
    _set(rb, "parent", ra)
    _set(ra, "size", ra.size + rb.size)
    if ra.value is None and rb.value is not None:
        _set(ra, "value", rb.value)
        informative = True
    if rb.watchers:
        _set(ra, "watchers", ra.watchers | rb.watchers)
    if informative:
        _schedule(ra.watchers)


def _bind(var: Var, items: list[Item]) -> None:
    if any(item is var for item in items):
        raise ShapeMismatch("a variadic dimension run cannot contain itself")
    _set(var, "binding", items)
    for constraint in var.watchers:
        for item in items:
            _add_watcher(item, constraint)
    _schedule(var.watchers)


def _var_index(items: list[Item]) -> int:
    for i, item in enumerate(items):
        if isinstance(item, Var):
            return i
    return -1


def unify(a_items: Sequence[Item], b_items: Sequence[Item]) -> None:
    """Make two shapes equal, binding variadics and merging dimensions; ShapeMismatch if impossible."""
    a, b = resolve(a_items), resolve(b_items)
    ia, ib = _var_index(a), _var_index(b)
    if ia < 0 and ib < 0:
        if len(a) != len(b):
            raise ShapeMismatch(f"rank {len(a)} != rank {len(b)}")
        for x, y in zip(a, b):
            _union(x, y)  # type: ignore[arg-type]
        return
    if ia < 0:
        a, b, ia, ib = b, a, ib, ia
    # `a` has a variadic at ia; `b` may have one at ib.
    pre_a, suf_a = a[:ia], a[ia + 1 :]
    if ib < 0:
        if len(b) < len(pre_a) + len(suf_a):
            raise ShapeMismatch(f"rank {len(b)} < minimum rank {len(pre_a) + len(suf_a)}")
        mid_end = len(b) - len(suf_a)
        for x, y in zip(pre_a, b[: len(pre_a)]):
            _union(x, y)  # type: ignore[arg-type]
        for x, y in zip(suf_a, b[mid_end:]):
            _union(x, y)  # type: ignore[arg-type]
        var_a = a[ia]
        assert isinstance(var_a, Var)
        _bind(var_a, b[len(pre_a) : mid_end])
        return
    pre_b, suf_b = b[:ib], b[ib + 1 :]
    var_a, var_b = a[ia], b[ib]
    assert isinstance(var_a, Var) and isinstance(var_b, Var)
    n_pre, n_suf = min(len(pre_a), len(pre_b)), min(len(suf_a), len(suf_b))
    for x, y in zip(pre_a[:n_pre], pre_b[:n_pre]):
        _union(x, y)  # type: ignore[arg-type]
    for x, y in zip(suf_a[len(suf_a) - n_suf :], suf_b[len(suf_b) - n_suf :]):
        _union(x, y)  # type: ignore[arg-type]
    if var_a is var_b:
        if len(pre_a) != len(pre_b) or len(suf_a) != len(suf_b):
            raise ShapeMismatch("a variadic dimension run cannot contain itself")
        return
    rest_pre_a, rest_pre_b = pre_a[n_pre:], pre_b[n_pre:]
    rest_suf_a, rest_suf_b = suf_a[: len(suf_a) - n_suf], suf_b[: len(suf_b) - n_suf]
    # Now one of rest_pre_* and one of rest_suf_* is empty.
    if not (rest_pre_a or rest_suf_a or rest_pre_b or rest_suf_b):
        # Bind the newcomer (b: the side being connected) unless only it is watched, keeping alias chains short.
        quiet, other = (var_b, var_a) if len(var_b.watchers) <= len(var_a.watchers) else (var_a, var_b)
        _bind(quiet, [other])
    elif not rest_pre_a and not rest_suf_a:
        _bind(var_a, [*rest_pre_b, var_b, *rest_suf_b])
    elif not rest_pre_b and not rest_suf_b:
        _bind(var_b, [*rest_pre_a, var_a, *rest_suf_a])
    else:
        # One side fixes leading dims, the other trailing ones ([Pb, Vb] against [Va, Sa]); they may overlap
        # (both variadics may be empty), so nothing more follows until a variadic is bound: defer.
        if not rest_pre_a:
            _defer([var_a, *rest_suf_a], [*rest_pre_b, var_b])
        else:
            _defer([*rest_pre_a, var_a], [var_b, *rest_suf_b])


class DeferredUnify:
    """`unify(a, b)` postponed until one of the variadics of `a` or `b` is bound (a class, so models pickle).

    Made when a shape fixing leading dims meets one fixing trailing dims ([N, C, ...] and [..., 3]):
    how much they overlap depends on the rank, so the link waits for it.
    """

    __slots__ = ("a", "b")

    def __init__(self, a: list[Item], b: list[Item]) -> None:
        self.a = a
        self.b = b

    def __call__(self) -> bool:
        if not any(isinstance(item, Var) and item.binding is not None for item in [*self.a, *self.b]):
            return False
        render_ = Renderer()
        before = f"{render_(self.a)} and {render_(self.b)}"
        try:
            unify(self.a, self.b)  # may defer again, on the variadics that are still unbound
        except ShapeMismatch as exc:
            raise ShapeMismatch(f"{before}, linked earlier, cannot be equal: {exc}") from None
        return True

    def __repr__(self) -> str:
        render_ = Renderer()
        return f"{render_(self.a)} == {render_(self.b)}"


def _defer(a: list[Item], b: list[Item]) -> None:
    link = Constraint(DeferredUnify(a, b), "deferred unification")
    for item in (*a, *b):
        if isinstance(item, Var):
            _add_watcher(item, link)


def deferred_links(items: Iterable[Item]) -> list[DeferredUnify]:
    """The pending deferred unifications watching the unbound variadics among `items`."""
    out: list[DeferredUnify] = []
    for item in resolve(list(items)):
        if isinstance(item, Var):
            out.extend(c.fn for c in item.watchers if not c.done and isinstance(c.fn, DeferredUnify))
    return out


Token = Union[str, int, None]


def instantiate(
    template: Mapping[str, Sequence[Token]], sizes: Mapping[str, int | None], keys: Iterable[str] | None = None
) -> dict[str, Shape]:
    """Build fresh shapes from a template such as {"input": ["...", "in"], "weight": ["out", "in"]}.

    Names shared between keys become the same Dim (or Var for names starting with "...");
    integers are fixed sizes; `sizes` gives values to named dimensions; `keys` picks the
    template's keys to build (default: all).
    """
    dims: dict[str, Dim] = {}
    vars_: dict[str, Var] = {}
    shapes: dict[str, Shape] = {}
    for key in template if keys is None else keys:
        tokens = template[key]
        items: list[Item] = []
        for token in tokens:
            if token is None:
                items.append(Dim())
            elif isinstance(token, int):
                items.append(Dim(token))
            elif token.startswith("..."):
                items.append(vars_.setdefault(token, Var()))
            else:
                if token not in dims:
                    dims[token] = Dim(sizes.get(token))
                items.append(dims[token])
        shapes[key] = Shape(items)
    return shapes


class Renderer:
    """Renders shapes with names that stay consistent across several keys."""

    def __init__(self) -> None:
        self._dim_names: dict[int, str] = {}
        self._var_names: dict[int, str] = {}

    def items(self, items: Sequence[Item]) -> list[str]:
        out: list[str] = []
        for item in resolve(items):
            if isinstance(item, Dim):
                if item.value is not None:
                    out.append(str(item.value))
                else:
                    out.append(self._dim_names.setdefault(id(item), f"d{len(self._dim_names)}"))
            else:
                name = "..." if not self._var_names else f"...{len(self._var_names)}"
                out.append(self._var_names.setdefault(id(item), name))
        return out

    def __call__(self, items: Sequence[Item]) -> str:
        return "[" + ", ".join(self.items(items)) + "]"


def render(items: Sequence[Item]) -> str:
    """A shape as text, e.g. "[..., d0, 20]"."""
    return Renderer()(items)


def dim_values(items: Sequence[Item]) -> tuple[int | None, ...] | None:
    """Concrete sizes (None for a symbolic dim), or None while the rank is unknown."""
    out: list[int | None] = []
    for item in resolve(items):
        if isinstance(item, Var):
            return None
        out.append(item.value)
    return tuple(out)


def copy_shapes(shapes: Sequence[Shape]) -> list[Shape]:
    """Independent copies of shapes that keep the sharing between them and their pending deferred
    unifications (see `DeferredUnify`), but drop other constraints (callers re-attach shape rules)."""
    dims: dict[int, Dim] = {}
    vars_: dict[int, Var] = {}
    pending: list[Var] = []

    def copy_items(items: Sequence[Item]) -> list[Item]:
        out: list[Item] = []
        for item in resolve(items):
            if isinstance(item, Dim):
                if id(item) not in dims:
                    dims[id(item)] = Dim(item.value)
                out.append(dims[id(item)])
            else:
                if id(item) not in vars_:
                    vars_[id(item)] = Var()
                    pending.append(item)
                out.append(vars_[id(item)])
        return out

    copies = [Shape(copy_items(shape.items)) for shape in shapes]
    seen: set[int] = set()
    while pending:  # copy each deferred link reachable from the copied variadics, following the links
        for link in deferred_links([pending.pop()]):
            if id(link) in seen:
                continue
            seen.add(id(link))
            copy = Constraint(DeferredUnify(copy_items(link.a), copy_items(link.b)), "deferred unification")
            for item in (*copy.fn.a, *copy.fn.b):  # type: ignore[attr-defined]
                if isinstance(item, Var):  # fresh objects: no transaction needed
                    item.watchers = item.watchers | {copy}
    return copies
