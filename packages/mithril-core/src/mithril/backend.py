"""The backend contract: what every backend class provides, and the op-table entry forms."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

from .dtypes import FLOAT_DTYPES, DType, as_dtype, float32

if TYPE_CHECKING:
    from .graph import Graph, Node
    from .optim.foreach import Foreach

__all__ = ["Backend", "BackendOptions", "Kernel", "OpImpl", "CompileOptions", "Program", "Precision"]

# How float32 matmuls and convolutions may run on accelerators: "highest" in full float32,
# "high" with reduced-precision kernels (TF32 or bfloat16x3), "default" as the framework's
# own settings say. A compile option of the backends that have such kernels (torch, JAX).
Precision = Literal["highest", "high", "default"]


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


@dataclass(frozen=True)
class BackendOptions:
    """A backend's own `ml.compile` keywords: subclasses are dataclasses whose typed fields declare them.

    This base declares none; a backend names its subclass in `Backend.compile_options_type`.
    """


@dataclass
class CompileOptions:
    """Everything `ml.compile` passes to `Backend.lower`, type-checked when created.

    static_inference: forward only, like inference, with every input and parameter shape fixed
    at compile time (so `inference` is True with it); backend: the backend's own options.
    """

    jit: bool = False
    inference: bool = False
    static_inference: bool = False
    file_path: str | None = None
    backend: BackendOptions = dataclasses.field(default_factory=BackendOptions)

    def __post_init__(self) -> None:
        hints = _type_hints(CompileOptions)
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name), hints[f.name], "ml.compile")
        self.inference = self.inference or self.static_inference


def parse_backend_options(backend: Backend, given: Mapping[str, Any]) -> BackendOptions:
    """The backend's declared options from `ml.compile`'s other keywords, checked by name and type."""
    declared = backend.compile_options_type
    hints = _type_hints(declared)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(declared)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        types_ = ", ".join(f"{name}: {type_name(hint)}" for name, hint in fields.items())
        own = f"valid options are {list(fields)} ({types_})" if fields else "it has no options of its own"
        raise TypeError(
            f"ml.compile: unknown option(s) {unknown} for backend {backend.name!r}; {own}; ml.compile's own are "
            "shapes, jit, inference, static_inference, outputs, trainable_keys and file_path"
        )
    for name, value in given.items():
        check_option(name, value, fields[name], f"ml.compile (backend {backend.name!r})")
    return declared(**given)


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """An options class's field types, evaluated once (its annotations are strings; every ml.compile reads them)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def check_option(name: str, value: Any, hint: Any, owner: str) -> None:
    """Raise a TypeError naming the option, its type and the value when `value` does not fit `hint`."""
    if not _fits(value, hint):
        raise TypeError(f"{owner}: option {name!r} must be {type_name(hint)}, got {value!r} ({type(value).__name__})")


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint`; only the outer type is checked (dict[str, Any] -> dict)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(hint))
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    return isinstance(value, origin or hint)


def type_name(hint: Any) -> str:
    """An annotation as written in source: `bool`, `str | None`, `dict[str, Any]`."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


StepUpdate = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any]]
FusedStep = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any, Any]]


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

    def place_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """`params` where calls want them: on a device mesh, each split or replicated by its key; else as given."""
        return params

    def fused_step(self, seeds: Mapping[str, float], update: StepUpdate) -> FusedStep | None:
        """Forward, backward (outputs seeded with the weights `seeds`) and `update` as one compiled program.

        The returned function maps (params, inputs, opt_state, step, lr) to (new params, new
        opt_state, outputs); `update(params, grads, opt_state, step, lr)` returns the first two.
        None (the default): `ml.Trainer` composes forward_backward and the update in Python.
        """
        return None


def _rebuild_backend(cls: type[Backend], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Backend:
    """Unpickle a backend: construct it again with the arguments it was created with."""
    return cls(*args, **kwargs)


class Backend(ABC):
    """Base class of all backends.

    Subclasses set the capability flags, implement the array helpers and `lower`.
    """

    name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[DType, ...]] = FLOAT_DTYPES
    supports_gradients: ClassVar[bool] = True
    # True when the backend differentiates lowered code with its own framework (torch, JAX);
    # otherwise it lowers the backward graph the core builds (mithril.primitives.joint_graph).
    native_autodiff: ClassVar[bool] = False
    supports_jit: ClassVar[bool] = False
    default_jit: ClassVar[bool] = False
    ops: ClassVar[Mapping[str, OpImpl]] = {}
    # The array type(s) evaluate takes, as error messages name them ("torch.Tensor").
    array_type: ClassVar[str] = "array"
    # The options this backend takes from `ml.compile`, handed to `lower` as `options.backend`.
    compile_options_type: ClassVar[type[BackendOptions]] = BackendOptions
    _init_args: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Backend:
        """Record the constructor arguments: a backend pickles and deep-copies as a call that rebuilds it."""
        backend = super().__new__(cls)
        backend._init_args = (args, kwargs)
        return backend

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild from class and constructor arguments (framework handles do not pickle); RNG state is fresh."""
        args, kwargs = self._init_args
        return (_rebuild_backend, (type(self), args, kwargs))

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
        """Whether `primitive` can be compiled on this backend: lowered natively, or decomposed by the core."""
        from .primitives.transform import lowerable  # noqa: PLC0415 - the declarations import the models

        return lowerable(primitive, self.op_table().__contains__)

    def lowers(self, primitive: str) -> bool:
        """Whether this backend lowers `primitive` itself (it is in the op table)."""
        return primitive in self.op_table()

    def constant(self, value: Any, shape: tuple[int, ...]) -> Any:
        """A constant array of the backend's float dtype, for the `scalar` and `constant` primitives."""
        import numpy as np  # noqa: PLC0415 - the core imports NumPy only where it needs it

        return self.array(np.asarray(value, dtype=np.float64).reshape(shape))

    def op_table(self) -> dict[str, OpImpl]:
        """This backend's ops plus the ones op-pack plugins add or override."""
        from .plugins import registry  # noqa: PLC0415 - avoid a cycle at import

        return {**self.ops, **registry.extra_ops(self.name)}

    def foreach_ops(self) -> Foreach:
        """The list-wise array math `ml.optim` runs on; by default built on the backend's NumPy-like `xp` module.

        Backends whose arrays have no such module (torch) override this with their own `Foreach`.
        """
        from .errors import UnsupportedError  # noqa: PLC0415 - keep this module's imports minimal
        from .optim.foreach import NamespaceForeach  # noqa: PLC0415 - ml.optim imports this module

        xp = getattr(self, "xp", None)
        if xp is None:
            raise UnsupportedError(
                f"{type(self).__name__} has no array module `xp` for ml.optim: set `xp` to a NumPy-like module "
                "or override `foreach_ops` to return an ml.optim.Foreach"
            )
        return NamespaceForeach(xp)

    # -- the array helpers users call --------------------------------------------
    @abstractmethod
    def array(self, data: Any, dtype: DType | None = None) -> Any:
        """Implemented by each backend."""

    def frozen(self, array: Any) -> Any:
        """`array` (of this backend) as a value its caller will not write while compiled models use it, such as
        the weights a generation loop passes every token. Backends that derive something from a weight (GGML's
        quantized types, torch's [in, out] copy of a vocabulary head) return an alias of the same memory from
        which they derive it once, for as long as the alias lives; the others return `array`."""
        return array

    @abstractmethod
    def to_numpy(self, array: Any) -> Any:
        """Implemented by each backend."""

    @abstractmethod
    def set_seed(self, seed: int) -> None:
        """Implemented by each backend."""

    def rng_state(self) -> Any:
        """The backend's random generator state as a NumPy array (for checkpoints), or None if not exposed."""
        return None

    def set_rng_state(self, state: Any) -> None:
        """Restore a state from `rng_state()`: draws and dropout masks then repeat from that point."""
        raise TypeError(f"backend {self.name!r} does not expose its random state (rng_state() is None)")

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
