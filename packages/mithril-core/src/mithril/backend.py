"""The backend contract: what every backend class provides, and the op-table entry forms."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

from .dtypes import FLOAT_DTYPES, DType, as_dtype, float32

if TYPE_CHECKING:
    from .graph import Graph, Node

__all__ = ["Backend", "Kernel", "OpImpl", "CompileOptions", "Program"]


@dataclass(frozen=True)
class Kernel:
    """An op implemented by a Python function that the generated code calls at run time.

    The call passes the node's inputs positionally (in key order) and its attributes as
    keyword arguments.
    """

    fn: Callable[..., Any]


# An op-table entry: a format template over input keys and attributes, e.g.
# "np.maximum({input}, 0)"; a function (node, args) -> expression for ops whose code
# depends on static shapes or attributes; or a Kernel called at run time.
OpImpl = Union[str, Callable[["Node", Mapping[str, str]], str], Kernel]


@dataclass
class CompileOptions:
    """Everything `ml.compile` passes to `Backend.lower`."""

    jit: bool = False
    inference: bool = False
    file_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Program:
    """What `Backend.lower` returns: the generated functions and their source.

    `forward(params, inputs)` returns the outputs dict; `forward_backward(params, inputs,
    output_gradients)` returns (outputs, gradients) and is absent for inference-only programs.
    """

    source: str = ""
    forward: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    forward_backward: Callable[
        [Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any]]
    ]


class Backend(ABC):
    """Base class of all backends.

    Subclasses set the capability flags, implement the array helpers and `lower`.
    """

    name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[DType, ...]] = FLOAT_DTYPES
    supports_gradients: ClassVar[bool] = True
    supports_jit: ClassVar[bool] = False
    default_jit: ClassVar[bool] = False
    ops: ClassVar[Mapping[str, OpImpl]] = {}

    def __init__(self, dtype: DType | str = float32, device: str = "cpu") -> None:
        dtype = as_dtype(dtype)
        if dtype not in self.supported_dtypes:
            names = ", ".join(f"ml.{d.name}" for d in self.supported_dtypes)
            raise TypeError(f"{type(self).__name__}: dtype {dtype!r} is not supported; choose one of {names}")
        self.dtype = dtype
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dtype={self.dtype!r}, device={self.device!r})"

    @classmethod
    def reject_unknown(cls, unknown: Mapping[str, Any]) -> None:
        """Raise a TypeError naming unknown constructor options and listing the valid ones."""
        if unknown:
            valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
            raise TypeError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}; valid options are {valid}")

    def supports(self, primitive: str) -> bool:
        """Whether `primitive` can be compiled on this backend (the conformance kit asks)."""
        return primitive in self.op_table()

    def op_table(self) -> dict[str, OpImpl]:
        """This backend's ops plus the ones op-pack plugins add or override."""
        from .plugins import registry  # noqa: PLC0415 - avoid a cycle at import

        return {**self.ops, **registry.extra_ops(self.name)}

    # -- the array helpers users call --------------------------------------------
    @abstractmethod
    def array(self, data: Any, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def to_numpy(self, array: Any) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def set_seed(self, seed: int) -> None:
        """Implemented by each backend."""

    @abstractmethod
    def randn(self, *shape: int, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def rand(self, *shape: int, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def ones(self, *shape: int, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def zeros(self, *shape: int, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def is_array(self, value: Any) -> bool:
        """Implemented by each backend."""

    @abstractmethod
    def dtype_of(self, array: Any) -> DType | None:
        """The core dtype of a backend array (None when it has none of ours)."""

    @abstractmethod
    def native_dtype(self, dtype: DType) -> Any:
        """The framework's dtype object for a core dtype."""

    def extra_checks(self, var: str) -> list[tuple[str, Any]]:
        """Extra fast-path checks on an argument variable, as (expression, expected value) pairs.

        For example a device check; a failing check leads to `array_problem` for the message.
        """
        return []

    def array_problem(self, array: Any) -> str | None:
        """What is wrong with an argument beyond key, shape and dtype (e.g. "on cpu, expected cuda:0")."""
        return None

    # -- lowering ------------------------------------------------------------------
    @abstractmethod
    def lower(self, graph: Graph, options: CompileOptions) -> Program:
        """Implemented by each backend."""
