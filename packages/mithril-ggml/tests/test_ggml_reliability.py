"""GGML reliability (issue 13): threads, in-place weight updates, empty batches, argument and index errors."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mithril as ml
from mithril.errors import IndexRangeError
from mithril.models import CrossEntropyLoss, Embedding, Model
from mithril.testing.models import quickstart_mlp
from mithril.testing.reliability import BackendReliability


@pytest.mark.parametrize("shapes", [{"input": [8, 20]}, None], ids=["static", "symbolic"])
def test_concurrent_calls_match_single_threaded_results(shapes: dict[str, list[int]] | None) -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes=shapes)
    params = (
        compiled.randomize_params(seed=0)
        if shapes
        else ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [8, 20]}).randomize_params(seed=0)
    )
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((8, 20)).astype(np.float32) for _ in range(16)]
    gs = [rng.standard_normal((8, 10)).astype(np.float32) for _ in range(16)]
    want = [compiled.evaluate(params, {"input": x})["output"] for x in xs]
    want_grads = [compiled.evaluate(params, {"input": x}, {"output": g})[1] for x, g in zip(xs, gs)]

    def call(i: int) -> bool:
        j = i % 16
        if i % 2:
            _, grads = compiled.evaluate(params, {"input": xs[j]}, {"output": gs[j]})
            return all(np.array_equal(grads[k], want_grads[j][k]) for k in grads)
        return bool(np.array_equal(compiled.evaluate(params, {"input": xs[j]})["output"], want[j]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(160)))


@pytest.mark.parametrize("quantize", [None, "float16", "int8"])
@pytest.mark.parametrize("shapes", [{"input": [4, 64]}, None], ids=["static", "symbolic"])
def test_in_place_parameter_writes_are_seen(quantize: str | None, shapes: dict[str, list[int]] | None) -> None:
    model = Model()
    model |= ml.models.Linear(dimension=64)  # 64 -> 64: int8 blocks apply
    model += ml.models.Relu()
    model += ml.models.Linear(dimension=32)
    backend = ml.GGMLBackend(quantize=quantize)
    compiled = ml.compile(model, backend, shapes=shapes, inference=quantize is not None)
    params = ml.compile(model, ml.NumpyBackend(), shapes={"input": [4, 64]}).randomize_params(seed=3)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    x = {"input": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}
    compiled.evaluate(params, x)
    for key in params:
        params[key][...] = params[key] * 2 + 0.25
        fresh = ml.compile(model, backend, shapes=shapes, inference=quantize is not None)
        want = fresh.evaluate({k: v.copy() for k, v in params.items()}, x)["output"]
        np.testing.assert_array_equal(compiled.evaluate(params, x)["output"], want, err_msg=key)


def test_in_place_writes_reach_gradients_and_the_transposed_weight_copy() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [32, 20]})
    reference = ml.compile(quickstart_mlp(), ml.NumpyBackend(dtype=ml.float32), shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=4)
    x = {"input": np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)}
    g = {"output": np.ones((32, 10), np.float32)}
    for step in range(3):
        params["linear_0.weight"][step, :] = 5.0  # the 20 -> 64 weight is read through a W^T copy
        np.testing.assert_allclose(
            compiled.evaluate(params, x)["output"], reference.evaluate(params, x)["output"], rtol=1e-5, atol=1e-5
        )
        grads, want = compiled.evaluate(params, x, g)[1], reference.evaluate(params, x, g)[1]
        for key in want:
            np.testing.assert_allclose(grads[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_empty_batch_returns_empty_outputs_and_zero_gradients() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend())
    params = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [1, 20]}).randomize_params(seed=0)
    x = {"input": np.zeros((0, 20), np.float32)}
    out = compiled.evaluate(params, x)["output"]
    assert out.shape == (0, 10) and out.dtype == np.float32
    out, grads = compiled.evaluate(params, x, {"output": np.zeros((0, 10), np.float32)})
    assert out["output"].shape == (0, 10)
    assert all(grads[k].shape == params[k].shape and not grads[k].any() for k in params)
    np.testing.assert_array_equal(  # the program still works afterwards
        compiled.evaluate(params, {"input": np.ones((2, 20), np.float32)})["output"].shape, (2, 10)
    )


def test_output_gradients_of_the_wrong_type_say_what_is_expected() -> None:
    compiled = ml.compile(quickstart_mlp(), ml.GGMLBackend(), shapes={"input": [2, 20]})
    params, x = compiled.randomize_params(seed=0), {"input": np.ones((2, 20), np.float32)}
    with pytest.raises(TypeError, match=r"output_gradients must be a dict from output name .*got ndarray"):
        compiled.evaluate(params, x, np.ones((2, 10), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ml.KeyNotFoundError, match=r"keys \['logits'\] must be a non-empty subset"):
        compiled.evaluate(params, x, {"logits": np.ones((2, 10), np.float32)})


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_embedding_index_out_of_range_is_refused(bad: int) -> None:
    model = Model()
    model |= Embedding(num_embeddings=5, embedding_dim=3)
    compiled = ml.compile(model, ml.GGMLBackend())
    params = {k: np.ones(v, np.float32) for k, v in {"embedding_0.weight": (5, 3)}.items()}
    with pytest.raises(IndexRangeError, match=rf"'input'\]? holds index {bad}, outside the valid range \[0, 5\)"):
        compiled.evaluate(params, {"input": np.array([[0, bad]])})


@pytest.mark.parametrize("bad", [3, -2])
def test_cross_entropy_class_out_of_range_is_refused(bad: int) -> None:
    model = Model()
    model |= CrossEntropyLoss()
    compiled = ml.compile(model, ml.GGMLBackend())
    logits = np.zeros((2, 3), np.float32)
    ok = compiled.evaluate(
        {}, {"input": logits, "crossentropyloss_0.target": np.array([0, -100])}
    )  # ignore_index is allowed
    assert np.isfinite(ok["output"])
    with pytest.raises(
        IndexRangeError,
        match=rf"'crossentropyloss_0.target'\]? holds (class|index) {bad}, outside the valid range \[0, 3\)",
    ):
        compiled.evaluate({}, {"input": logits, "crossentropyloss_0.target": np.array([0, bad])})


class TestGGMLReliability(BackendReliability):
    """The core's checks: the float dtype rule (float32 only here), threads, in-place writes."""

    backend_name = "ggml"


@pytest.mark.parametrize("layout", ["c", "transposed", "strided"])
def test_one_element_written_in_a_large_converted_weight_is_seen(layout: str) -> None:
    """A 256 KB int8 weight given C-ordered, as a transposed view or strided: changing one element re-quantizes."""
    model = Model()
    model |= ml.models.Linear(dimension=256)
    compiled = ml.compile(model, ml.GGMLBackend(quantize="int8"), shapes={"input": [2, 256]}, inference=True)
    rng = np.random.default_rng(5)
    source = rng.standard_normal((256, 512) if layout == "strided" else (256, 256)).astype(np.float32)
    weight = {"c": source, "transposed": source.T, "strided": source[:, ::2]}[layout]
    params = {"linear_0.weight": weight, "linear_0.bias": np.zeros(256, np.float32)}
    x = {"input": rng.standard_normal((2, 256)).astype(np.float32)}
    before = compiled.evaluate(params, x)["output"]
    weight[7, 9] += 100.0
    after = compiled.evaluate(params, x)["output"]
    want = ml.compile(model, ml.GGMLBackend(quantize="int8"), shapes={"input": [2, 256]}, inference=True).evaluate(
        {k: v.copy() for k, v in params.items()}, x
    )["output"]
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, want)


def test_frozen_weights_are_read_only_views_loaded_once_and_never_compared() -> None:
    """GGMLBackend.frozen: no copy, writes refused; an int8 weight converted from it keeps no snapshot to compare."""
    from mithril_ggml.lowering import program_of

    backend = ml.GGMLBackend(quantize="int8")
    model = Model()
    model |= ml.models.Linear(dimension=64)
    compiled = ml.compile(model, backend, shapes={"input": [2, 64]}, inference=True)
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    frozen = {"linear_0.weight": backend.frozen(weight), "linear_0.bias": backend.frozen(np.zeros(64, np.float32))}
    assert np.shares_memory(frozen["linear_0.weight"], weight)
    with pytest.raises(ValueError, match="read-only"):
        frozen["linear_0.weight"][0, 0] = 1.0
    x = {"input": rng.standard_normal((2, 64)).astype(np.float32)}
    want = compiled.evaluate({"linear_0.weight": weight.copy(), "linear_0.bias": np.zeros(64, np.float32)}, x)
    np.testing.assert_array_equal(compiled.evaluate(frozen, x)["output"], want["output"])
    assert program_of(compiled, "test")._last_store.snapshots == []
    assert ml.NumpyBackend().frozen(weight) is weight  # backends that convert nothing return the array itself


def test_a_frozen_weight_is_quantized_once_for_every_program_and_forgotten_with_it() -> None:
    from mithril_ggml import lowering

    backend = ml.GGMLBackend(quantize="int8")
    model = Model()
    model |= ml.models.Linear(dimension=64)
    rng = np.random.default_rng(3)
    params = {
        "linear_0.weight": backend.frozen(rng.standard_normal((64, 64)).astype(np.float32)),
        "linear_0.bias": backend.frozen(np.zeros(64, np.float32)),
    }
    outputs = []
    for batch in (1, 3):  # two programs, as generation's prompt and next-token step models
        compiled = ml.compile(model, backend, shapes={"input": [batch, 64]}, static_inference=True)
        outputs.append(compiled.evaluate(params, {"input": np.ones((batch, 64), np.float32)})["output"])
    key = (id(params["linear_0.weight"]), quant_type := lowering.quant.QUANTIZE_MODES["int8"])
    assert key in lowering._FROZEN_PREPARED and quant_type != 0
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    del params, compiled
    gc.collect()  # the compiled models hold the weights until they are collected
    assert key not in lowering._FROZEN_PREPARED


def test_frozen_weights_stay_quantized_across_generate_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights frozen once are quantized by the first generate call only; plain arrays by every call (they may
    have been written since); kept step models let go of frozen weights' quantized form with the weights."""
    from mithril.zoo import generation, gpt2
    from mithril_ggml import lowering

    config = gpt2.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    rng = np.random.default_rng(4)
    plain = {k: rng.standard_normal(s).astype(np.float32) * 0.2 for k, s in gpt2.param_shapes(config).items()}
    backend = ml.GGMLBackend(quantize="int8")
    prepared: list[tuple[int, ...]] = []
    real_prepare = lowering.quant.prepare
    monkeypatch.setattr(lowering.quant, "prepare", lambda a, *rest: prepared.append(a.shape) or real_prepare(a, *rest))
    generation.clear_cache()
    ids = rng.integers(0, 64, (1, 4))
    frozen = {k: backend.frozen(v) for k, v in plain.items()}
    first = gpt2.generate(backend, config, frozen, ids, max_new_tokens=5)
    per_call = len(prepared)
    assert per_call == len(plain)  # each weight once, shared by the prompt's and the next token's programs
    np.testing.assert_array_equal(gpt2.generate(backend, config, frozen, ids, max_new_tokens=5), first)
    assert len(prepared) == per_call  # nothing quantized again
    np.testing.assert_array_equal(gpt2.generate(backend, config, plain, ids, max_new_tokens=5), first)
    np.testing.assert_array_equal(gpt2.generate(backend, config, plain, ids, max_new_tokens=5), first)
    assert len(prepared) == 3 * per_call
    key = (id(frozen["wte.weight"]), lowering.quant.QUANTIZE_MODES["int8"])
    assert key in lowering._FROZEN_PREPARED
    del frozen
    generation.clear_cache()
    gc.collect()
    assert key not in lowering._FROZEN_PREPARED
