"""What a primitive is: its one declaration, and the registry of all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Union

from ..errors import UnsupportedError
from .examples import Example, check_examples

if TYPE_CHECKING:
    from ..graph import Node
    from ..shapes import Shape
    from .builder import Applied, Builder

__all__ = ["Port", "Primitive", "declare", "get", "PRIMITIVES", "CORE_SET", "Template", "Attrs"]

Attrs = Mapping[str, Any]
Template = Mapping[str, Sequence[Union[str, int, None]]]
ShapeRule = Callable[[dict[str, "Shape"], Attrs], bool]
# A reverse-mode rule: from the node (its inputs, outputs, attributes and the cotangents of its
# outputs) build, with the builder, the cotangent of each wanted input; None means zero.
VJP = Callable[["Builder", "Applied"], Mapping[str, Any]]
# A decomposition: build the node's outputs out of simpler primitives.
Decomposition = Callable[["Builder", "Applied"], Mapping[str, Any]]


@dataclass(frozen=True)
class Port:
    """One input of a primitive: its element kind and whether gradients flow through it."""

    name: str
    kind: str = "float"  # "float", "int" or "any" (the primitive's `settle` decides at compile time)
    differentiable: bool = True
    optional: bool = False
    # int ports holding indices: (input key, axis, or the attribute naming the axis) whose size
    # bounds them, and the attribute naming one extra value that is allowed (CrossEntropyLoss's ignore_index)
    index_of: tuple[str, int | str] | None = None
    index_exempt: str | None = None


@dataclass(frozen=True, eq=False)
class Primitive:
    """A primitive, declared once: signature, shape and dtype rules, gradient and decomposition.

    `template` maps each key to its shape template (a function of the attributes when the
    shape depends on them); `rule` completes what a template cannot say. Output kinds are
    the dtype rule: "float" outputs take the backend's float dtype. `vjp` builds the
    input cotangents as a graph of primitives; `decomposition` builds the outputs from
    simpler primitives (composites only). `inference` names the primitive that replaces
    this one when compiling for inference; `state_updates` maps an output to the state
    input whose new value it holds. `random` primitives draw from the backend's RNG.
    `macs` counts the multiply-accumulates of one application from the concrete shapes of its
    inputs and outputs (backends use it to size thread pools); `examples` are its conformance
    cases (mithril.primitives.examples); one at least.
    """

    name: str
    inputs: tuple[Port, ...]
    template: Template | Callable[[Attrs], Template]
    outputs: Mapping[str, str] = field(default_factory=lambda: {"output": "float"})
    attrs: Mapping[str, Any] = field(default_factory=dict)
    rule: ShapeRule | None = None
    vjp: VJP | None = None
    decomposition: Decomposition | None = None
    inference: str | None = None
    macs: Callable[[Mapping[str, tuple[int, ...]]], int] | None = None
    state_updates: Mapping[str, str] = field(default_factory=dict)
    random: bool = False
    core: bool = False
    doc: str = ""
    examples: tuple[Example, ...] = ()
    settle: Callable[[Node], None] | None = None

    def shape_template(self, attrs: Attrs) -> Template:
        """The shape template for these attribute values."""
        return self.template(attrs) if callable(self.template) else self.template

    def port(self, key: str) -> Port:
        try:
            return self._ports[key]
        except KeyError:
            raise KeyError(f"primitive {self.name!r} has no input {key!r}") from None

    @cached_property
    def _ports(self) -> dict[str, Port]:
        """The inputs by name (computed once: models, builders and gradients look them up per node)."""
        return {p.name: p for p in self.inputs}

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.inputs)

    def differentiable(self, key: str) -> bool:
        port = self.port(key)
        return port.differentiable and port.kind == "float"


PRIMITIVES: dict[str, Primitive] = {}
# The primitives a backend must lower to run every layer, forward and backward.
CORE_SET: set[str] = set()


def declare(primitive: Primitive) -> Primitive:
    """Register a primitive; a name may be declared once."""
    if primitive.name in PRIMITIVES:
        raise ValueError(f"primitive {primitive.name!r} is declared twice")
    if not primitive.core and primitive.decomposition is None:
        raise ValueError(f"primitive {primitive.name!r} is neither in the core set nor decomposable")
    check_examples(primitive)
    PRIMITIVES[primitive.name] = primitive
    if primitive.core:
        CORE_SET.add(primitive.name)
    return primitive


def get(name: str) -> Primitive:
    """The declaration of `name`; UnsupportedError for an undeclared primitive."""
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise UnsupportedError(f"no primitive named {name!r} is declared") from None
