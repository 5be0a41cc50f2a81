"""mithril.zoo.gpt2 equals Hugging Face's GPT2LMHeadModel with the same random weights: logits, gradients and
greedy generation with a key/value cache on every backend; int8/int4 on GGML keep HF's top-1 tokens."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from zoo_support import backend_or_skip, top1_agreement

import mithril as ml
from mithril.zoo import generation, gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 100, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
# No dropout (HF in eval mode applies none; gradients compare in training form); initializer_range 0.2 spreads
# the random model's logits, so greedy decoding does not collapse into one repeated token.
HF_ARGS = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.2}
HF_ARGS |= {"bos_token_id": 0, "eos_token_id": None, "pad_token_id": 0}


def hf_model(dtype: str = "float64", seed: int = 0, **overrides: Any) -> Any:
    """A random-weight GPT2LMHeadModel of the tiny config, in eval mode, eager attention."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**TINY, **HF_ARGS, **overrides}, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    return model.to(getattr(torch, dtype))


@pytest.fixture(scope="module")
def hf64() -> Any:
    return hf_model("float64")


@pytest.fixture(scope="module")
def hf32() -> Any:
    return hf_model("float32")


def prompt(batch: int = 2, length: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], (batch, length))


def mithril_params(hf: Any) -> tuple[gpt2.GPT2Config, dict[str, np.ndarray]]:
    config = gpt2.GPT2Config.from_hf(hf.config)
    return config, gpt2.params_from_hf(hf.state_dict(), config)


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


LOGIT_CASES = [("numpy", "float64", 1e-9), ("torch", "float64", 1e-9), ("jax", "float64", 1e-9)]
LOGIT_CASES += [("ggml", "float32", 1e-4)]


@pytest.mark.parametrize(("name", "dtype", "tolerance"), LOGIT_CASES)
def test_logits_equal_hf(name: str, dtype: str, tolerance: float, hf64: Any, hf32: Any) -> None:
    backend = backend_or_skip(name, dtype)
    hf = hf64 if dtype == "float64" else hf32
    config, params = mithril_params(hf)
    ids = prompt(2, 9)
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.double().numpy()
    compiled = ml.compile(gpt2.gpt2(config), backend, shapes={"input_ids": list(ids.shape)})
    assert compiled.output_keys == ["logits"]
    weights = {k: backend.array(v) for k, v in params.items()}
    got = backend.to_numpy(compiled.evaluate(weights, {"input_ids": backend.array(ids)})["logits"])
    assert got.shape == (2, 9, TINY["vocab_size"])
    assert relative_error(got, expected) < tolerance


@pytest.mark.parametrize("name", ["numpy", "torch", "jax"])
def test_gradients_equal_hf(name: str, hf64: Any) -> None:
    backend = backend_or_skip(name, "float64")
    config, params = mithril_params(hf64)
    ids = prompt(2, 6, seed=1)
    upstream = np.random.default_rng(2).standard_normal((2, 6, TINY["vocab_size"]))
    hf64.zero_grad()
    hf64(torch.tensor(ids)).logits.backward(torch.tensor(upstream))
    expected = gpt2.params_from_hf({k: p.grad for k, p in hf64.named_parameters()}, config)
    compiled = ml.compile(gpt2.gpt2(config), backend, shapes={"input_ids": list(ids.shape)})
    weights = {k: backend.array(v) for k, v in params.items()}
    _, grads = compiled.evaluate(weights, {"input_ids": backend.array(ids)}, {"logits": backend.array(upstream)})
    assert sorted(grads) == sorted(expected)
    # The key biases' gradients are zero in exact arithmetic (softmax ignores a shift shared by every key):
    # both sides hold rounding noise there, measured against a millionth of the largest gradient.
    floor = 1e-6 * max(float(np.abs(v).max()) for v in expected.values())
    for key, value in expected.items():
        error = np.abs(backend.to_numpy(grads[key]) - value).max() / max(float(np.abs(value).max()), floor)
        assert error < 1e-8, key


GENERATE_CASES = [(n, d) for n in ("numpy", "torch", "jax") for d in ("float64", "float32")] + [("ggml", "float32")]


@pytest.mark.parametrize(("name", "dtype"), GENERATE_CASES)
def test_greedy_generation_equals_hf(name: str, dtype: str, hf64: Any, hf32: Any) -> None:
    backend = backend_or_skip(name, dtype)
    hf = hf64 if dtype == "float64" else hf32
    config, params = mithril_params(hf)
    ids = prompt(2, 5, seed=3)
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor(ids),
            max_new_tokens=16,
            do_sample=False,
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
        ).numpy()
    got = gpt2.generate(backend, config, params, ids, max_new_tokens=16)
    assert got.shape == (2, 5 + 16)
    assert len(set(expected[:, 5:].ravel().tolist())) > 4  # a non-degenerate continuation
    np.testing.assert_array_equal(got, expected)


def test_generation_reads_the_prompt_once_then_one_token_per_step(hf32: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = backend_or_skip("numpy", "float32")
    config, params = mithril_params(hf32)
    compiles: list[Any] = []
    calls: list[tuple[int, ...]] = []
    real_compile = ml.compile

    def counting_compile(*args: Any, **kwargs: Any) -> Any:
        compiled = real_compile(*args, **kwargs)
        compiles.append(kwargs["shapes"])
        evaluate = compiled.evaluate

        def counting_evaluate(params: Any, inputs: Any) -> Any:
            calls.append(tuple(inputs["input_ids"].shape))
            return evaluate(params, inputs)

        compiled.evaluate = counting_evaluate
        return compiled

    monkeypatch.setattr(ml.compiler, "compile", counting_compile)
    generation.clear_cache()  # compiled step models kept by earlier tests would not be compiled again
    out = gpt2.generate(backend, config, params, prompt(1, 4), max_new_tokens=6)
    assert out.shape == (1, 10)
    assert [shapes["input_ids"] for shapes in compiles] == [[1, 4], [1, 1]]  # the prompt's chunk, then single tokens
    assert all(shapes["h_0.attn.past_key"] == [1, 9, None] for shapes in compiles)  # one fixed cache: 4 + 6 - 1
    assert calls == [(1, 4)] + [(1, 1)] * 5


def test_compiled_step_models_are_kept_across_calls(hf32: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = backend_or_skip("numpy", "float32")
    config, params = mithril_params(hf32)
    compiles: list[Any] = []
    real_compile = ml.compile
    monkeypatch.setattr(ml.compiler, "compile", lambda *a, **k: compiles.append(k["shapes"]) or real_compile(*a, **k))
    monkeypatch.setattr(generation, "STEP_MODELS_KEPT", 4)
    generation.clear_cache()
    first = gpt2.generate(backend, config, params, prompt(1, 4), max_new_tokens=6)
    assert len(compiles) == 2
    np.testing.assert_array_equal(gpt2.generate(backend, config, params, prompt(1, 4), max_new_tokens=6), first)
    assert len(compiles) == 2  # the same backend, config, batch and lengths: nothing compiled again
    gpt2.generate(backend, config, params, prompt(1, 4), max_new_tokens=7)  # another cache length
    gpt2.generate(ml.NumpyBackend(), config, params, prompt(1, 4), max_new_tokens=6)  # another backend
    gpt2.generate(backend, gpt2.GPT2Config(**{**TINY, "n_layer": 1}), params_of_layers(params, 1), prompt(1, 4), 6)
    assert len(compiles) == 8
    assert len(generation._step_models) == generation.STEP_MODELS_KEPT  # the oldest were dropped
    generation.clear_cache()
    gpt2.generate(backend, config, params, prompt(1, 4), max_new_tokens=6)
    assert len(compiles) == 10


def params_of_layers(params: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The parameters of the first `layers` blocks (and the rest of the model)."""
    deeper = re.compile(r"h_(\d+)\.")
    return {k: v for k, v in params.items() if not (m := deeper.match(k)) or int(m.group(1)) < layers}


KEPT_CASES = [("numpy", {}), ("torch", {}), ("jax", {}), ("ggml", {}), ("ggml", {"quantize": "int8"})]


@pytest.mark.parametrize(("name", "options"), KEPT_CASES, ids=["numpy", "torch", "jax", "ggml", "ggml-int8"])
def test_kept_step_models_see_weights_written_between_calls(name: str, options: Any, hf32: Any) -> None:
    """A weight written in place between two calls changes the second call's tokens as if nothing were kept."""
    backend = backend_or_skip(name, "float32", **options)
    config, params = mithril_params(hf32)
    params = {k: backend.array(v.copy()) for k, v in params.items()}
    ids = prompt(1, 5, seed=3)
    before = gpt2.generate(backend, config, params, ids, max_new_tokens=8)
    head = params["wte.weight"]  # tied: the token embeddings and the LM head
    written = np.random.default_rng(1).standard_normal(tuple(head.shape)).astype(np.float32) * 3
    if name in ("numpy", "ggml"):
        head[...] = written  # in place, through the very array the kept programs saw last
    elif name == "torch":
        with torch.no_grad():
            head.copy_(torch.from_numpy(written))
    else:  # JAX arrays are immutable: a new array under the same key
        params = {**params, "wte.weight": backend.array(written)}
    after = gpt2.generate(backend, config, params, ids, max_new_tokens=8)
    generation.clear_cache()
    np.testing.assert_array_equal(after, gpt2.generate(backend, config, params, ids, max_new_tokens=8))
    assert not np.array_equal(after, before)


def test_logits_to_keep_computes_the_last_positions_only(hf32: Any) -> None:
    backend = backend_or_skip("numpy", "float32")
    config, params = mithril_params(hf32)
    ids = {"input_ids": prompt(2, 6)}
    full = ml.compile(gpt2.gpt2(config), backend, shapes={"input_ids": [2, 6]}).evaluate(params, ids)["logits"]
    last = ml.compile(gpt2.gpt2(config, logits_to_keep=2), backend, shapes={"input_ids": [2, 6]})
    np.testing.assert_allclose(last.evaluate(params, ids)["logits"], full[:, -2:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"gpt2: logits_to_keep must be an int >= 0 .* got -1"):
        gpt2.gpt2(config, logits_to_keep=-1)


@pytest.mark.parametrize(("name", "options"), KEPT_CASES, ids=["numpy", "torch", "jax", "ggml", "ggml-int8"])
def test_threads_generating_at_once_share_kept_step_models(name: str, options: Any, hf32: Any) -> None:
    """Four threads generate from two prompts through the same kept step models: each gets its own tokens."""
    from concurrent.futures import ThreadPoolExecutor

    backend = backend_or_skip(name, "float32", **options)
    config, params = mithril_params(hf32)
    prompts = [prompt(1, 5, seed=4), prompt(1, 5, seed=5)]
    generation.clear_cache()
    alone = [gpt2.generate(backend, config, params, ids, max_new_tokens=8) for ids in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: gpt2.generate(backend, config, params, prompts[i % 2], 8), range(8)))
    for i, ids in enumerate(together):
        np.testing.assert_array_equal(ids, alone[i % 2])


def test_cache_mask_is_causal_over_the_appended_chunk() -> None:
    mask = generation.cache_mask(6, 3, 2)  # positions 2, 3, 4 after positions 0, 1 already cached
    # after the append, position p sits at index 6 - 3 - 2 + p = 1 + p; index 0 is empty
    np.testing.assert_array_equal(mask == 0, [[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])


def test_sampling_is_reproducible(hf32: Any) -> None:
    backend = backend_or_skip("numpy", "float32")
    config, params = mithril_params(hf32)
    ids = prompt(2, 4)
    first = gpt2.generate(backend, config, params, ids, 12, temperature=0.9, top_k=20, seed=7)
    again = gpt2.generate(backend, config, params, ids, 12, temperature=0.9, top_k=20, seed=7)
    other = gpt2.generate(backend, config, params, ids, 12, temperature=0.9, top_k=20, seed=8)
    greedy = gpt2.generate(backend, config, params, ids, 12)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    np.testing.assert_array_equal(gpt2.generate(backend, config, params, ids, 12, temperature=1.0, top_k=1), greedy)
    np.testing.assert_array_equal(gpt2.generate(backend, config, params, ids, 0), ids)


def test_sample_keeps_top_k() -> None:
    logits = np.array([[0.0, 5.0, 4.0, -1.0]] * 200)
    drawn = generation.sample(logits, 1.0, 2, np.random.default_rng(0))
    assert set(drawn.tolist()) == {1, 2}


BAD_GENERATE = [
    ({"input_ids": [[1, 100]]}, "token id 100, outside [0, 100)"),
    ({"input_ids": [[1, -1]]}, "token id -1"),
    ({"input_ids": np.zeros((1, 0), dtype=np.int64)}, "input_ids is empty"),
    ({"input_ids": [[1, 2]], "max_new_tokens": 63}, "exceeds the model's 64 positions"),
    ({"input_ids": np.ones((1, 65), dtype=np.int64), "max_new_tokens": 0}, "prompt length 65"),
    ({"input_ids": [[1, 2]], "max_new_tokens": -1}, "max_new_tokens must be an int >= 0"),
    ({"input_ids": [1, 2]}, "input_ids must have shape [batch, length]"),
    ({"input_ids": [[1.0, 2.0]]}, "input_ids must hold integer token ids"),
    ({"input_ids": [[1, 2]], "temperature": -1.0}, "temperature must be a number >= 0"),
    ({"input_ids": [[1, 2]], "top_k": 0}, "top_k must be None or an int >= 1"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_GENERATE, ids=[m for _, m in BAD_GENERATE])
def test_bad_generate_arguments_are_refused_before_work(
    arguments: dict[str, Any], message: str, hf32: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, params = mithril_params(hf32)
    monkeypatch.setattr(ml.compiler, "compile", lambda *a, **k: pytest.fail("compiled before refusing"))
    with pytest.raises(ValueError if "integer" not in message else TypeError, match=re.escape(message)):
        gpt2.generate(ml.NumpyBackend(), config, params, **arguments)


def test_params_of_another_config_are_refused(hf32: Any) -> None:
    config, params = mithril_params(hf32)
    wider = gpt2.GPT2Config(**{**TINY, "n_embd": 64})
    with pytest.raises(
        ValueError, match=r"state_dict\['transformer.wte.weight'\] has shape \[100, 32\], expected \[100, 64\]"
    ):
        gpt2.params_from_hf(hf32.state_dict(), wider)
    deeper = gpt2.GPT2Config(**{**TINY, "n_layer": 3})
    with pytest.raises(KeyError, match=r"missing keys \['transformer.h.2.ln_1.weight'"):
        gpt2.params_from_hf(hf32.state_dict(), deeper)
    shallower = gpt2.GPT2Config(**{**TINY, "n_layer": 1})
    with pytest.raises(KeyError, match=r"unexpected keys \['transformer.h.1.ln_1.weight'"):
        gpt2.params_from_hf(hf32.state_dict(), shallower)
    with pytest.raises(KeyError, match=r"missing keys \['h_2.ln_1.weight'"):
        gpt2.generate(ml.NumpyBackend(), deeper, params, [[1, 2]])
    with pytest.raises(ValueError, match=r"params\['wte.weight'\] has shape \[100, 32\], expected \[100, 64\]"):
        gpt2.generate(ml.NumpyBackend(), wider, params, [[1, 2]])


def test_state_dict_buffers_numpy_arrays_and_untied_heads(hf32: Any) -> None:
    config, params = mithril_params(hf32)
    arrays = {k: v.numpy() for k, v in hf32.state_dict().items()}
    arrays["transformer.h.0.attn.bias"] = np.tril(np.ones((64, 64), dtype=bool))[None, None]  # an old checkpoint's mask
    from_numpy = gpt2.params_from_hf(arrays, config)
    assert all(np.array_equal(from_numpy[k], params[k]) for k in params)
    arrays["transformer.h.0.attn.extra"] = np.zeros(3)
    with pytest.raises(KeyError, match=r"unexpected keys \['transformer.h.0.attn.extra'\]"):
        gpt2.params_from_hf(arrays, config)
    untied = hf_model("float64", tie_word_embeddings=False)
    untied_config, untied_params = mithril_params(untied)
    assert "lm_head.weight" in untied_params
    compiled = ml.compile(gpt2.gpt2(untied_config), ml.NumpyBackend(dtype=ml.float64), shapes={"input_ids": [1, 5]})
    ids = prompt(1, 5)
    got = compiled.evaluate(untied_params, {"input_ids": ids})["logits"]
    with torch.no_grad():
        assert relative_error(got, untied(torch.tensor(ids)).logits.numpy()) < 1e-9


def test_ggml_int8_keeps_hf_top1_and_int4_is_reported(hf32: Any) -> None:
    int8 = backend_or_skip("ggml", "float32", quantize="int8")
    int4 = backend_or_skip("ggml", "float32", quantize="int4")
    config, params = mithril_params(hf32)
    agreement8 = top1_agreement(int8, gpt2.gpt2(config), params, hf32, config.vocab_size)
    agreement4 = top1_agreement(int4, gpt2.gpt2(config), params, hf32, config.vocab_size)
    print(f"GGML top-1 agreement with HF float32 over 128 positions: int8 {agreement8:.3f}, int4+GPTQ {agreement4:.3f}")
    assert agreement8 >= 0.95
    assert agreement4 >= 0.5
    ids = gpt2.generate(int8, config, params, prompt(1, 4), max_new_tokens=8)
    assert ids.shape == (1, 12)


def test_the_zoo_imports_no_framework(run_python: Any) -> None:
    code = "import sys, mithril.zoo.gpt2; print(sorted(set(sys.modules) & {'torch', 'jax', 'ggml', 'transformers'}))"
    assert run_python(code).stdout.strip() == "[]"
