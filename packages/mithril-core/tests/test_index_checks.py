"""Index inputs (Embedding rows, CrossEntropyLoss classes) are checked against their range before any work."""

from __future__ import annotations

import numpy as np
import pytest

import mithril as ml
from mithril.errors import IndexRangeError
from mithril.models import CrossEntropyLoss, Embedding, Linear, Model


def _embedding_model() -> Model:
    model = Model()
    model |= Embedding(5, 3)
    model += Linear(2)
    return model


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_embedding_index_out_of_range_names_key_value_and_range(bad: int) -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(_embedding_model(), backend, shapes={"input": [4]})
    params = compiled.randomize_params(seed=0)
    good = np.array([0, 1, 4, 2])
    assert compiled.evaluate(params, {"input": good})["output"].shape == (4, 2)
    with pytest.raises(
        IndexRangeError, match=rf"inputs\['input'\] holds index {bad}, outside the valid range \[0, 5\)"
    ):
        compiled.evaluate(params, {"input": np.array([0, bad, 1, 2])})
    with pytest.raises(IndexRangeError, match="embedding_0"):
        compiled.evaluate(params, {"input": np.array([0, bad, 1, 2])}, {"output": np.ones((4, 2))})


def test_cross_entropy_targets_allow_ignore_index_and_refuse_other_values() -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(CrossEntropyLoss(ignore_index=-100), backend, shapes={"input": [3, 4]})
    logits = backend.randn(3, 4)
    assert np.isfinite(compiled.evaluate({}, {"input": logits, "target": np.array([0, -100, 3])})["output"])
    with pytest.raises(IndexRangeError, match=r"holds index 4, outside the valid range \[0, 4\) \(or -100"):
        compiled.evaluate({}, {"input": logits, "target": np.array([0, 4, 3])})


def test_core_set_backend_checks_indices_of_decomposed_losses() -> None:
    """The tracer lowers cross_entropy through its decomposition (one_hot); the check still applies."""
    tracer = pytest.importorskip("mithril_tracer")
    backend = tracer.TracerBackend(dtype=ml.float64)
    compiled = ml.compile(CrossEntropyLoss(), backend, shapes={"input": [2, 3]})
    assert "one_hot" in {n.primitive for n in compiled.graph.nodes}
    with pytest.raises(IndexRangeError, match="holds index -2"):
        compiled.evaluate({}, {"input": backend.randn(2, 3), "target": np.array([-2, 0])})


def test_empty_index_input_is_valid() -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(_embedding_model(), backend, shapes={"input": [None]})
    params = compiled.randomize_params(seed=0)
    # an input whose rank is fixed but every size symbolic is checked by rank alone
    assert compiled.evaluate(params, {"input": np.array([1, 2, 3])})["output"].shape == (3, 2)
    assert compiled.evaluate(params, {"input": np.zeros(0, np.int64)})["output"].shape == (0, 2)
