"""Conformance cases come from the declarations, and the kit catches what it is there to catch."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril import models
from mithril.graph import flatten
from mithril.models.base import Operator
from mithril.primitives import PRIMITIVES, Port, Primitive, declare
from mithril.primitives.examples import Example, Sample, dropout_statistics
from mithril.testing import CASES, INFERENCE_CASES, KINK_CASES, PRIMITIVE_CASES, Case, check_case
from mithril.testing.cases import primitive_cases

LAYER_CASES = [*CASES, *INFERENCE_CASES, *KINK_CASES]


def _primitive(**changes: Any) -> Primitive:
    """A core primitive named like no declared one, with one smooth example unless `changes` say otherwise."""
    fields: dict[str, Any] = {
        "name": "conformance_test_only",
        "inputs": (Port("input"),),
        "template": {"input": ["..."], "output": ["..."]},
        "core": True,
        "examples": (Example({"input": (2, 3)}),),
    }
    return Primitive(**{**fields, **changes})


def test_every_declared_primitive_has_cases() -> None:
    assert {c.primitive for c in PRIMITIVE_CASES} == set(PRIMITIVES)


def test_every_gradient_rule_is_checked_by_some_case() -> None:
    """Against the reference and finite differences, or (random primitives) by the declared statistic."""
    checked = {
        c.primitive
        for c in PRIMITIVE_CASES
        if c.grads and any(PRIMITIVES[c.primitive].differentiable(k) for k in c.shapes)
    }
    with_rule = {name for name, decl in PRIMITIVES.items() if decl.vjp is not None}
    assert with_rule <= checked, sorted(with_rule - checked)


def test_every_rule_with_a_kink_is_also_checked_by_finite_differences() -> None:
    kinked = {c.primitive for c in PRIMITIVE_CASES if not c.smooth}
    smooth = {c.primitive for c in PRIMITIVE_CASES if c.smooth and c.grads}
    assert kinked <= smooth, sorted(kinked - smooth)


def test_case_names_are_unique() -> None:
    for cases in (PRIMITIVE_CASES, LAYER_CASES):
        names = [c.name for c in cases]
        assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_swept_attributes_make_one_case_each() -> None:
    (decl,) = [PRIMITIVES["mse_loss"]]
    cases = primitive_cases([decl])
    assert [c.name for c in cases] == ["mse_loss-reduction=mean", "mse_loss-reduction=sum", "mse_loss-reduction=none"]
    assert [c.attrs["reduction"] for c in cases] == ["mean", "sum", "none"]


@pytest.mark.parametrize("case", [*PRIMITIVE_CASES, *LAYER_CASES], ids=lambda c: c.name)
def test_domains_and_int_ranges_name_real_inputs(case: Case) -> None:
    graph = flatten(case.build(), inference=bool(case.options.get("inference")))
    keys = {e.name: e.kind for e in [*graph.inputs, *graph.params]}
    assert set(case.domain) <= set(keys), sorted(set(case.domain) - set(keys))
    # an "any" input (CrossEntropyLoss's target) is drawn as ints or floats, as the case says
    assert {k for k, kind in keys.items() if kind == "int"} <= set(case.int_inputs)
    assert set(case.int_inputs) <= {k for k, kind in keys.items() if kind in ("int", "any")}


def test_every_catalogue_layer_has_a_layer_case() -> None:
    layers = {
        cls
        for name in models.__all__
        if inspect.isclass(cls := getattr(models, name)) and issubclass(cls, Operator) and cls is not Operator
    }
    covered = {type(node.op) for case in LAYER_CASES for node in flatten(case.build()).nodes}
    assert layers <= covered, sorted(cls.__name__ for cls in layers - covered)


# -- declare() refuses primitives without fitting examples ------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"examples": ()}, "no conformance examples"),
        ({"examples": (Example({"x": (2,)}),)}, r"unknown inputs \['x'\]"),
        ({"examples": (Example({}),)}, r"miss required ones \['input'\]"),
        ({"examples": (Example({"input": (2,)}, domain={"input": "huge"}),)}, "bad domains"),
        ({"examples": (Example({"input": (2,)}, attrs={"axis": 0}),)}, r"unknown attributes \['axis'\]"),
        ({"examples": (Example({"input": (2,)}, ints={"input": 3}),)}, "exactly the int inputs"),
        ({"random": True}, "checked by a statistic"),
    ],
    ids=["none", "unknown-input", "missing-input", "domain", "attribute", "ints", "random"],
)
def test_declare_refuses_a_primitive_without_fitting_examples(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        declare(_primitive(**changes))
    assert "conformance_test_only" not in PRIMITIVES


# -- the kit catches wrong results --------------------------------------------------------------
@pytest.fixture
def wrong_sin_rule() -> Iterator[None]:
    """sin's gradient rule replaced by cos(x) * g * 1.01, for one test."""
    decl = PRIMITIVES["sin"]
    wrong = lambda b, n: {"input": b.mul(b.scalar(1.01), b.mul(n.g["output"], b.cos(n["input"])))}  # noqa: E731
    PRIMITIVES["sin"] = dataclasses.replace(decl, vjp=wrong)
    try:
        yield
    finally:
        PRIMITIVES["sin"] = decl


def test_a_wrong_gradient_rule_fails_finite_differences(wrong_sin_rule: None) -> None:
    (case,) = primitive_cases([PRIMITIVES["sin"]])  # a fresh case: nothing cached for it
    reference = ml.NumpyBackend(dtype=ml.float64)
    with pytest.raises(AssertionError, match="finite-difference gradient of 'input'"):
        check_case(case, ml.NumpyBackend(dtype=ml.float64), reference)


def test_a_backend_disagreeing_with_the_core_rule_fails() -> None:
    """float32 NumPy passes against the float64 reference; gradients 1% off do not."""
    (case,) = primitive_cases([PRIMITIVES["sin"]])
    reference = ml.NumpyBackend(dtype=ml.float64)
    check_case(case, ml.NumpyBackend(dtype=ml.float32), reference)  # also caches the reference's results
    evaluate = ml.CompiledModel.evaluate

    def off(self: ml.CompiledModel, *args: Any) -> Any:
        result = evaluate(self, *args)
        return result if len(args) < 3 else (result[0], {k: v * 1.01 for k, v in result[1].items()})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ml.CompiledModel, "evaluate", off)
        with pytest.raises(AssertionError, match="gradient of 'input'"):
            check_case(case, ml.NumpyBackend(dtype=ml.float64), reference)


def _sample(mask: np.ndarray, p: float, **changes: Any) -> Sample:
    x = np.random.default_rng(0).standard_normal(mask.shape)
    fields: dict[str, Any] = {
        "attrs": {"p": p},
        "inputs": {"input": x},
        "outputs": {"output": x * mask, "mask": mask},
        "seeds": {},
        "grads": {},
        "rtol": 1e-7,
        "atol": 0.0,
    }
    return Sample(**{**fields, **changes})


def test_dropout_statistic_accepts_a_fair_mask_and_rejects_unfair_ones() -> None:
    rng = np.random.default_rng(0)
    fair = (rng.random((64, 64)) >= 0.5) * 2.0
    dropout_statistics(_sample(fair, 0.5))
    with pytest.raises(AssertionError, match="of the mask is zero"):
        dropout_statistics(_sample((rng.random((64, 64)) >= 0.3) * 2.0, 0.5))
    with pytest.raises(AssertionError, match="1/\\(1-p\\)"):
        dropout_statistics(_sample(fair / 2.0, 0.5))
    with pytest.raises(AssertionError):
        dropout_statistics(_sample(fair, 0.5, outputs={"output": np.zeros((64, 64)), "mask": fair}))
