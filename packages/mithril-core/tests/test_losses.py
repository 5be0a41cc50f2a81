"""Loss layers composed as users write them (issue 13): Linear -> CrossEntropyLoss at every rank,
class-index and class-probability targets, and clear errors for targets that fit neither."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import mithril as ml
from mithril.models import CrossEntropyLoss, Linear, Model, MSELoss, Sum


def classifier(**kwargs: object) -> Model:
    model = Model()
    model |= Linear(dimension=3)(input="input", output="logits")
    model |= CrossEntropyLoss(**kwargs)(input="logits", target="target", output="output")  # type: ignore[arg-type]
    return model


@pytest.mark.parametrize(
    ("shape", "target"),
    [([None, 5], (4,)), ([5], ()), ([None, 2, 5], None)],
    ids=["N,C", "C", "N,C,d"],
)
def test_linear_then_cross_entropy_compiles_and_infers_the_target(shape: list, target: tuple | None) -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    if len(shape) == 3:  # logits [N, C, d]: the class axis must be axis 1, so Linear's output is moved there
        model = Model()
        model |= Linear(dimension=3)(input="input", output="h")
        from mithril.models import Transpose

        model |= Transpose(axes=(0, 2, 1))(input="h", output="logits")
        model |= CrossEntropyLoss(reduction="none")(input="logits", target="target", output="output")
    else:
        model = classifier()
    compiled = ml.compile(model, backend, shapes={"input": shape})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(*[4 if d is None else d for d in shape])
    t = np.zeros(target if target is not None else (4, 2), np.int64)
    out = compiled.evaluate(params, {"input": x, "target": t})["output"]
    assert np.all(np.isfinite(out)) and out.shape == (() if len(shape) < 3 else (4, 2))


def test_classifier_target_shape_is_inferred_and_checked() -> None:
    compiled = ml.compile(classifier(), ml.NumpyBackend(), shapes={"input": [None, 5]})
    assert compiled.shapes["target"] == ("d0",) or len(compiled.shapes["target"]) == 1
    with pytest.raises(ml.IndexRangeError, match="'target'.*index 3.*\\[0, 3\\)"):
        compiled.evaluate(
            compiled.randomize_params(seed=0), {"input": np.zeros((2, 5), np.float32), "target": np.array([0, 3])}
        )


def test_probability_target_from_its_shape_and_from_a_float_producer() -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    by_shape = ml.compile(classifier(), backend, shapes={"input": [2, 5], "target": [2, 3]})
    params = by_shape.randomize_params(seed=0)
    x, probs = backend.randn(2, 5), np.full((2, 3), 1 / 3)
    loss = by_shape.evaluate(params, {"input": x, "target": probs})["output"]
    logits = x @ params["linear_0.weight"].T + params["linear_0.bias"]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -(logp * probs).sum(1).mean(), rtol=1e-12)
    # a float target of unknown rank (Linear's [..., 3]) holds probabilities: its kind decides
    produced = Model()
    produced |= Linear(dimension=3)(input="input", output="logits")
    produced |= Linear(dimension=3)(input="teacher", output="soft")
    produced |= CrossEntropyLoss()(input="logits", target="soft", output="output")
    by_kind = ml.compile(produced, backend, shapes={"input": [2, 5]})
    assert len(by_kind.shapes["teacher"]) == 2


def test_targets_that_fit_neither_form_are_refused_clearly() -> None:
    backend = ml.NumpyBackend()
    with pytest.raises(ml.ShapeError, match="rank 3 fits logits of rank 2 neither as class indices"):
        ml.compile(classifier(), backend, shapes={"input": [2, 5], "target": [2, 3, 1]})
    model = Model()
    model |= Linear(dimension=3)(input="input", output="logits")
    model |= Sum(axis=1)(input="scores", output="t")  # a float target of the indices' shape
    model |= CrossEntropyLoss()(input="logits", target="t", output="output")
    with pytest.raises(ml.DTypeMismatchError, match="holds class indices, which must be int values.*float"):
        ml.compile(model, backend, shapes={"input": [2, 5], "scores": [2, 4]})
    with pytest.raises(ml.ShapeError, match="class axis"):
        ml.compile(CrossEntropyLoss(), backend, shapes={"input": []})


def test_class_weights_fix_the_class_axis_at_every_rank() -> None:
    with pytest.raises(ml.ShapeError):
        ml.compile(classifier(weight=[1.0, 2.0]), ml.NumpyBackend(), shapes={"input": [None, 5]})
    compiled = ml.compile(CrossEntropyLoss(weight=[1.0, 2.0, 3.0]), ml.NumpyBackend(), shapes={"input": [3]})
    assert compiled.shapes["input"] == (3,) and compiled.shapes["target"] == ()


def test_classifier_with_a_deferred_shape_link_pickles_and_compiles_after() -> None:
    model = pickle.loads(pickle.dumps(classifier()))
    compiled = ml.compile(model, ml.NumpyBackend(), shapes={"input": [7, 5]})
    assert compiled.shapes["target"] == (7,)


@pytest.mark.parametrize("shape", [[], [4], [2, 3], [2, 3, 4]])
def test_mse_loss_at_every_rank(shape: list[int]) -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(MSELoss(), backend, shapes={"input": shape})
    x, t = backend.randn(*shape), backend.randn(*shape)
    out = compiled.evaluate({}, {"input": x, "target": t})["output"]
    np.testing.assert_allclose(out, np.mean((x - t) ** 2), rtol=1e-12)
