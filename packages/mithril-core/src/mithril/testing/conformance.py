"""The backend conformance suite as a pytest test class.

A backend package runs it from its own tests:

    from mithril.testing.conformance import BackendConformance

    class TestConformance(BackendConformance):
        backend_name = "mybackend"

Every declared primitive's cases (`Primitive.examples`), the catalogue layers, inputs on
kinks (ties and zeros), the quick start MLP and every torch-parity case run against the
float64 NumPy reference, and every primitive's cases again with NaN and ±inf planted in its
inputs (propagated as torch does): outputs, and (when the backend declares gradient support)
gradients against the reference's (the core's rules) and against finite differences, with
dtype-aware tolerances. Every op the backend lowers must be exercised by a case, forward or
in a backward graph; plus argument errors, dtype handling, seeded RNG and parameter
exchange. A primitive the backend cannot run, natively or decomposed, must be refused at
compile time with an UnsupportedError naming it and the backend, and that is checked too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from .. import compiler, dtypes
from ..backend import Backend
from ..errors import DTypeMismatchError, KeyNotFoundError, ShapeError, UnsupportedError
from ..graph import flatten
from ..models import Linear, Model, Relu
from ..plugins import registry
from ..primitives import joint_graph
from . import (
    CASES,
    INFERENCE_CASES,
    KINK_CASES,
    NONFINITE_CASES,
    PRIMITIVE_CASES,
    Case,
    check_case,
    compile_case,
    test_dtype,
)
from .models import quickstart_mlp
from .torch_parity import PARITY_CASES, ParityCase, check_torch_parity

__all__ = ["BackendConformance"]


def _mlp() -> Model:
    model = Model()
    model |= Linear(8)
    model += Relu()
    model += Linear(3)
    return model


def _declared(check: Callable[[], None]) -> None:
    """Run a check; an UnsupportedError (a capability the backend refuses, e.g. one attribute value
    of a primitive) becomes a skip that shows the backend's own message."""
    try:
        check()
    except UnsupportedError as exc:
        pytest.skip(f"declared unsupported by the backend: {exc}")


class BackendConformance:
    """Subclass with `backend_name` set; override `backend_options` for extra constructor arguments."""

    backend_name: str = ""
    backend_options: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------
    def backend_class(self) -> type[Backend]:
        return registry.backend_class(self.backend_name)

    def dtype(self) -> dtypes.DType:
        dtype = test_dtype(
            dtypes.float64 if dtypes.float64 in self.backend_class().supported_dtypes else dtypes.float32
        )
        if dtype not in self.backend_class().supported_dtypes:
            pytest.skip(f"backend {self.backend_name!r} does not support {dtype.name}")
        return dtype

    def make(self, dtype: dtypes.DType | None = None) -> Backend:
        return self.backend_class()(dtype=dtype or self.dtype(), **self.backend_options)

    def reference(self) -> Backend:
        return registry.backend_class("numpy")(dtype=dtypes.float64)

    def check(self, case: Case) -> None:
        """`check_case` on this backend; primitives it cannot run even decomposed must be refused at compile time."""
        backend = self.make()
        graph = flatten(case.build(), inference=bool(case.options.get("inference")))
        missing = sorted({n.primitive for n in graph.nodes if not backend.supports(n.primitive)})
        if missing:
            with pytest.raises(UnsupportedError) as info:
                compiler.compile(case.build(), backend, shapes=case.shapes, **case.options)
            named = [p for p in missing if repr(p) in str(info.value)]
            assert named == missing and repr(backend.name) in str(info.value), (
                f"the refusal must name {missing} and backend {backend.name!r}: {info.value}"
            )
            return
        _declared(lambda: check_case(case, backend, self.reference(), grads=backend.supports_gradients))

    # -- primitives and layers -------------------------------------------------------------
    @pytest.mark.parametrize("case", PRIMITIVE_CASES, ids=lambda c: c.name)
    def test_primitive_matches_reference(self, case: Case) -> None:
        """Each example every primitive declares, forward and (where it has a gradient rule) backward."""
        self.check(case)

    @pytest.mark.parametrize("case", [*CASES, *INFERENCE_CASES], ids=lambda c: c.name)
    def test_layer_matches_reference(self, case: Case) -> None:
        """Each catalogue layer as users build it, symbolic batches, a composed block and inference forms included."""
        self.check(case)

    @pytest.mark.parametrize("case", KINK_CASES, ids=lambda c: c.name)
    def test_gradient_at_kinks_matches_reference(self, case: Case) -> None:
        """Ties split the gradient and relu/abs have gradient 0 at 0, as in the reference (and torch)."""
        self.check(case)

    @pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: c.name)
    def test_nan_and_inf_propagate_as_in_torch(self, case: Case) -> None:
        """Every primitive with NaN, +inf and -inf planted in its float inputs: NaN and infinities where the
        reference (torch's rules) has them, equal values elsewhere, gradients included.

        In float32 and float64: torch's own half-precision kernels (upcasting, fused, vectorised)
        disagree with each other on infinities, so there is no one rule to match there."""
        if self.dtype() not in (dtypes.float32, dtypes.float64):
            pytest.skip("NaN and Inf propagation is checked in float32 and float64 (torch's half kernels differ)")
        self.check(case)

    def test_static_inference_matches_a_normal_compile(self) -> None:
        """static_inference=True gives a normal compile's outputs, refuses gradients, also compiles without shapes
        (the quick start's deployment form), and an unknown compile option is refused naming the backend."""
        backend = self.make()
        static = compiler.compile(quickstart_mlp(), backend, shapes={"input": [3, 20]}, static_inference=True)
        normal = compiler.compile(quickstart_mlp(), backend, shapes={"input": [3, 20]})
        params, x = normal.randomize_params(seed=0), {"input": backend.randn(3, 20)}
        np.testing.assert_array_equal(
            backend.to_numpy(static.evaluate(params, x)["output"]),
            backend.to_numpy(normal.evaluate(params, x)["output"]),
        )
        with pytest.raises(UnsupportedError, match="inference only"):
            static.evaluate(params, x, {"output": backend.ones(3, 10)})
        assert compiler.compile(quickstart_mlp(), backend, static_inference=True).options.inference
        with pytest.raises(TypeError, match=rf"unknown option\(s\) \['fuse'\] for backend '{backend.name}'"):
            compiler.compile(quickstart_mlp(), backend, fuse=True)

    def test_quickstart_mlp_matches_reference(self) -> None:
        """A composed model, at the quick start's sizes; elementwise tolerances hold in float32 and float64."""
        if self.dtype() not in (dtypes.float32, dtypes.float64):
            pytest.skip("the quick start MLP is checked in float32 and float64")
        self.check(Case("quickstart_mlp", "linear", quickstart_mlp, {"input": [32, 20]}))

    def test_every_op_has_a_case(self) -> None:
        """Each primitive the backend lowers runs in some case: in its forward graph or its backward graph."""
        backend = self.make()
        covered: set[str] = set()
        for case in [*PRIMITIVE_CASES, *CASES, *INFERENCE_CASES, *KINK_CASES]:
            try:
                graph = compile_case(case, backend).graph
                covered.update(node.primitive for node in graph.nodes)
                if case.grads and graph.params and backend.supports_gradients:
                    seeds = [e.name for e in graph.outputs if e.updates is None]
                    covered.update(node.primitive for node in joint_graph(graph, seeds, backend.lowers).nodes)
            except UnsupportedError:
                continue  # refused: `check` asserts the refusal names the primitive
        lowered = set(backend.op_table())
        assert lowered <= covered, sorted(lowered - covered)

    @pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
    @pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: c.name)
    def test_layer_matches_torch(self, case: ParityCase, training: bool) -> None:
        pytest.importorskip("torch")
        backend = self.make()
        if backend.dtype not in (dtypes.float32, dtypes.float64):
            pytest.skip("torch parity is checked in float32 and float64")
        if training and not backend.supports_gradients:
            pytest.skip(f"backend {self.backend_name!r} declares no gradient support")
        graph = flatten(case.build(), inference=not training)
        missing = sorted({n.primitive for n in graph.nodes if not backend.supports(n.primitive)})
        if missing:
            with pytest.raises(UnsupportedError):
                compiler.compile(case.build(), backend, shapes=case.shapes, inference=not training)
            return
        _declared(lambda: check_torch_parity(case, backend, training=training))

    # -- behaviour -------------------------------------------------------------------------
    def test_gradients_capability(self) -> None:
        backend = self.make()
        compiled = compiler.compile(_mlp(), backend, shapes={"input": [4, 5]})
        params = compiled.randomize_params(seed=0)
        x = {"input": backend.randn(4, 5)}
        out = compiled.evaluate(params, x)["output"]
        g = {"output": backend.ones(*np.shape(backend.to_numpy(out)))}
        if backend.supports_gradients:
            _, grads = compiled.evaluate(params, x, g)
            assert list(grads) == list(params)
        else:
            with pytest.raises(UnsupportedError):
                compiled.evaluate(params, x, g)

    def test_unsupported_dtypes_are_refused(self) -> None:
        for dtype in dtypes.FLOAT_DTYPES:
            if dtype not in self.backend_class().supported_dtypes:
                with pytest.raises(TypeError, match=dtype.name):
                    self.backend_class()(dtype=dtype, **self.backend_options)

    def test_argument_errors_name_the_key(self) -> None:
        backend = self.make()
        compiled = compiler.compile(_mlp(), backend, shapes={"input": [4, 5]})
        params = compiled.randomize_params(seed=0)
        with pytest.raises(ShapeError, match=r"inputs\['input'\]"):
            compiled.evaluate(params, {"input": backend.randn(4, 6)})
        with pytest.raises(KeyNotFoundError, match="linear_0.weight"):
            partial = {k: v for k, v in params.items() if k != "linear_0.weight"}
            compiled.evaluate(partial, {"input": backend.randn(4, 5)})
        other = next((d for d in (dtypes.float64, dtypes.float32) if d is not backend.dtype), None)
        if other is not None:
            wrong = backend.array(np.zeros((4, 5)), dtype=other)
            with pytest.raises(DTypeMismatchError, match=backend.dtype.name):
                compiled.evaluate(params, {"input": wrong})
        assert compiled.evaluate(params, {"input": backend.randn(4, 5)})["output"].shape == (4, 3)

    def test_helpers_use_the_backend_dtype(self) -> None:
        backend = self.make()
        for make in (backend.randn, backend.rand, backend.ones, backend.zeros):
            assert backend.dtype_of(make(2, 3)) is backend.dtype
        assert backend.dtype_of(backend.array(np.ones((2, 2)))) is backend.dtype

    def test_seeded_rng_is_reproducible(self) -> None:
        backend = self.make()
        backend.set_seed(123)
        first = backend.to_numpy(backend.randn(3, 4))
        backend.set_seed(123)
        np.testing.assert_array_equal(first, backend.to_numpy(backend.randn(3, 4)))
        assert not np.array_equal(first, backend.to_numpy(backend.randn(3, 4)))

    def test_parameter_exchange_through_numpy(self) -> None:
        backend = self.make()
        reference = self.reference()
        compiled = compiler.compile(_mlp(), reference, shapes={"input": [4, 5]})
        params = compiled.randomize_params(seed=1)
        moved = {k: backend.array(v) for k, v in params.items()}
        rtol = 1e-12 if backend.dtype is dtypes.float64 else 1e-2
        for key, value in moved.items():
            np.testing.assert_allclose(np.asarray(backend.to_numpy(value), np.float64), params[key], rtol=rtol)
