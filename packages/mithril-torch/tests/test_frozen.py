"""TorchBackend.frozen: aliases promised unchanged, and the [in, out] copy a vocabulary head keeps for them."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import mithril as ml
from mithril.models import Linear, Model
from mithril_torch import frozen

VOCAB, WIDTH = 8192, 512  # wider than deep by 16, 4M weights: a head for kernels.wide_linear


def head(bias: bool) -> Model:
    model = Model()
    model |= Linear(VOCAB, bias=bias)(input="input", output="output")
    return model


def test_frozen_is_an_alias_of_the_same_memory_returned_as_it_is() -> None:
    backend = ml.TorchBackend()
    weight = torch.randn(4, 3, requires_grad=True)
    alias = backend.frozen(weight)
    assert alias is not weight and alias.data_ptr() == weight.data_ptr() and not alias.requires_grad
    assert backend.frozen(alias) is alias and backend.array(alias) is alias
    assert not frozen.is_frozen(weight)


@pytest.mark.parametrize(
    ("dtype", "bias", "rows"), [("float32", True, 1), ("float64", False, 3), ("float32", False, 32)]
)
def test_a_frozen_head_multiplies_through_one_transposed_copy_with_the_same_numbers(
    dtype: str, bias: bool, rows: int
) -> None:
    backend = ml.TorchBackend(dtype=getattr(ml, dtype))
    compiled = ml.compile(head(bias), backend, shapes={"input": [rows, WIDTH]}, static_inference=True)
    assert "_k.wide_linear(" in compiled.program.source
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(rows, WIDTH)}
    plain = compiled.evaluate(params, x)["output"]
    before = len(frozen._TRANSPOSED)
    weights = {k: backend.frozen(v) for k, v in params.items()}
    got = compiled.evaluate(weights, x)["output"]
    assert len(frozen._TRANSPOSED) == before + 1  # the head's copy; the bias needs none
    compiled.evaluate(weights, x)
    assert len(frozen._TRANSPOSED) == before + 1  # made once
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got.numpy(), plain.numpy(), rtol=tolerance, atol=tolerance)
    del weights
    gc.collect()
    assert len(frozen._TRANSPOSED) == before  # dropped with the frozen alias


def test_gradients_through_a_frozen_head_are_autograd_s() -> None:
    backend = ml.TorchBackend(dtype=ml.float64)
    compiled = ml.compile(head(True), backend, shapes={"input": [2, WIDTH]})
    params = compiled.randomize_params(seed=1)
    x = {"input": backend.randn(2, WIDTH)}
    upstream = {"output": backend.randn(2, VOCAB)}
    _, expected = compiled.evaluate(params, x, upstream)
    _, got = compiled.evaluate({k: backend.frozen(v) for k, v in params.items()}, x, upstream)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_narrow_weights_keep_f_linear() -> None:
    model = Model()
    model |= Linear(VOCAB // 16)(input="input", output="output")
    compiled = ml.compile(model, ml.TorchBackend(), shapes={"input": [1, WIDTH]}, static_inference=True)
    assert "_k.wide_linear(" not in compiled.program.source and "F.linear(" in compiled.program.source


def test_generation_copies_a_plain_head_per_call_and_a_frozen_one_once() -> None:
    """A head written in place between two calls changes the tokens; weights frozen by the caller keep one copy."""
    from mithril.zoo import gpt2

    config = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=WIDTH, n_layer=1, n_head=2)
    backend = ml.TorchBackend()
    rng = np.random.default_rng(5)
    params = {
        k: torch.from_numpy(rng.standard_normal(s).astype(np.float32) * 0.3)
        for k, s in gpt2.param_shapes(config).items()
    }
    ids = rng.integers(0, VOCAB, (1, 4))
    before = gpt2.generate(backend, config, params, ids, max_new_tokens=4)
    with torch.no_grad():
        params["wte.weight"].copy_(torch.from_numpy(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)))
    after = gpt2.generate(backend, config, params, ids, max_new_tokens=4)
    assert not np.array_equal(after, before)
    host = {k: v.numpy() for k, v in params.items()}
    np.testing.assert_array_equal(after, gpt2.generate(ml.NumpyBackend(), config, host, ids, max_new_tokens=4))
    copies = len(frozen._TRANSPOSED)
    weights = {k: backend.frozen(v) for k, v in params.items()}
    np.testing.assert_array_equal(gpt2.generate(backend, config, weights, ids, max_new_tokens=4), after)
    np.testing.assert_array_equal(gpt2.generate(backend, config, weights, ids, max_new_tokens=4), after)
    assert len(frozen._TRANSPOSED) == copies + 1
