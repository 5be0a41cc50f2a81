"""Llama as a Mithril model: Hugging Face's config fields, weights from a LlamaForCausalLM state dict, generation.

RMSNorm, SwiGLU MLP, rotary position embeddings and grouped-query attention (num_key_value_heads <
num_attention_heads). Parameter keys follow HF's module names with "layers_<i>" for "layers.<i>":
"embed_tokens.weight", "layers_<i>.input_layernorm.weight", "layers_<i>.self_attn.q_proj.weight",
"layers_<i>.mlp.gate_proj.weight", "norm.weight", "lm_head.weight" (absent when embeddings are tied).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..models.attention import ApplyRotaryEmb, Arange, RMSNorm, RotaryEmbedding
from ..models.base import Model
from ..models.layers import Add, Embedding, Linear, Multiply, SiLU
from ..models.sequence import Chunk, Concat
from . import _hf, generation

__all__ = ["LlamaConfig", "llama", "params_from_hf", "param_shapes", "generate"]

PREFIX = "model."
BUFFERS = ("rotary_emb.inv_freq",)  # older checkpoints store the rotary frequencies: not parameters


@dataclass(frozen=True)
class LlamaConfig:
    """Hugging Face's LlamaConfig fields that define the network (defaults: HF's)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for name in (*names, "max_position_embeddings"):
            _positive(name, getattr(self, name))
        for name in ("num_key_value_heads", "head_dim"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LlamaConfig: hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                f"{self.num_attention_heads} (or give head_dim)"
            )
        if self.dim % 2:
            raise ValueError(f"LlamaConfig: the head dimension {self.dim} must be even (rotary embeddings)")
        if self.hidden_act != "silu":
            raise ValueError(f"LlamaConfig: hidden_act {self.hidden_act!r} is not supported; Llama uses 'silu'")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig: rope_theta must be > 0, got {self.rope_theta!r}")

    @property
    def kv_heads(self) -> int:
        """num_key_value_heads, or num_attention_heads when None."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim(self) -> int:
        """Each head's width: head_dim, or hidden_size // num_attention_heads."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, config: Any) -> LlamaConfig:
        """The fields of a transformers LlamaConfig; rope_theta also from its rope_parameters (default rope only)."""

        def get(name: str, default: Any) -> Any:
            return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)

        values = {f.name: get(f.name, f.default) for f in fields(cls)}
        rope = get("rope_parameters", None) or get("rope_scaling", None) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(f"LlamaConfig.from_hf: rope_type {kind!r} is not supported; only 'default' rotary")
        if "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        return cls(**values)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LlamaConfig: {name} must be an int >= 1, got {value!r}")


def _rotate(model: Model, source: str, output: str, heads: int) -> None:
    """HF's apply_rotary_pos_emb on packed heads [..., T, heads * dim]: each head rotated by cos, sin [..., T, dim]."""
    model |= Chunk(heads, dim=-1)(input=source, **{f"output{h}": f"{source}_head{h}" for h in range(heads)})
    for h in range(heads):
        rotary = ApplyRotaryEmb(unsqueeze_dim=None)
        model |= rotary(input=f"{source}_head{h}", cos="cos", sin="sin", output=f"{source}_rotated{h}")
    pieces = {f"input{h}": f"{source}_rotated{h}" for h in range(heads)}
    model |= Concat(heads, dim=-1)(**pieces, output=output)


def _layer(config: LlamaConfig, index: int, cached: bool, chunk: int) -> Model:
    """One decoder layer: RMSNorm, attention with rotary q/k and GQA, residual, RMSNorm, SwiGLU MLP, residual."""
    h, eps, heads, kv = config.hidden_size, config.rms_norm_eps, config.num_attention_heads, config.kv_heads
    layer = Model(name=f"layers_{index}")
    layer |= RMSNorm(h, eps=eps, name="input_layernorm")(input="input", output="normed_1")
    attn = Model(name="self_attn")
    bias = config.attention_bias
    attn |= Linear(heads * config.dim, bias=bias, name="q_proj")(input="input", output="q")
    attn |= Linear(kv * config.dim, bias=bias, name="k_proj")(input="input", output="k")
    attn |= Linear(kv * config.dim, bias=bias, name="v_proj")(input="input", output="v")
    _rotate(attn, "q", "q_rotated", heads)
    _rotate(attn, "k", "k_rotated", kv)
    generation.attention(
        attn, heads, kv, cached=cached, chunk=chunk, query="q_rotated", key="k_rotated", value="v", output="o"
    )
    attn |= Linear(h, bias=bias, name="o_proj")(input="o", output="output")
    layer |= attn(input="normed_1", cos="cos", sin="sin", output="attended")
    layer |= Add()(left="input", right="attended", output="residual_1")
    layer |= RMSNorm(h, eps=eps, name="post_attention_layernorm")(input="residual_1", output="normed_2")
    mlp = Model(name="mlp")
    mlp |= Linear(config.intermediate_size, bias=config.mlp_bias, name="gate_proj")(input="input", output="gate")
    mlp |= Linear(config.intermediate_size, bias=config.mlp_bias, name="up_proj")(input="input", output="up")
    mlp |= SiLU()(input="gate", output="activated")
    mlp |= Multiply()(left="activated", right="up", output="gated")
    mlp |= Linear(h, bias=config.mlp_bias, name="down_proj")(input="gated", output="output")
    layer |= mlp(input="normed_2", output="mlp_out")
    layer |= Add()(left="residual_1", right="mlp_out", output="output")
    return layer


def llama(config: LlamaConfig, *, cached: bool = False, chunk: int = 1, logits_to_keep: int = 0) -> Model:
    """LlamaForCausalLM: input "input_ids" [B, T] (int) -> output "logits" [B, T, vocab_size].

    cached=True builds the step model reading `chunk` tokens per call with a key/value cache
    (mithril.zoo.generation's protocol), with the same parameter keys. logits_to_keep > 0 computes
    the logits of the last positions only, as HF's argument (generation keeps 1).
    """
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"llama: config must be a LlamaConfig, got {type(config).__name__}")
    model = Model()
    embed = Embedding(config.vocab_size, config.hidden_size, name="embed_tokens")
    model |= embed(input="input_ids", weight="embed_tokens.weight", output="embeds")
    if not cached:
        model |= Arange(dim=1)(like="input_ids", output="position_ids")
    rotary = RotaryEmbedding(config.dim, config.max_position_embeddings, config.rope_theta, name="rotary_emb")
    model |= rotary(input="position_ids", cos="cos", sin="sin")
    hidden = "embeds"
    for index in range(config.num_hidden_layers):
        model |= _layer(config, index, cached, chunk)(input=hidden, cos="cos", sin="sin", output=f"hidden_{index}")
        hidden = f"hidden_{index}"
    hidden = generation.keep_last(model, hidden, logits_to_keep, "llama")
    model |= RMSNorm(config.hidden_size, eps=config.rms_norm_eps, name="norm")(input=hidden, output="final")
    head = Linear(config.vocab_size, bias=False, name="lm_head")
    if config.tie_word_embeddings:
        model |= head(input="final", weight="embed_tokens.weight", output="logits")
    else:
        model |= head(input="final", output="logits")
    model.canonical_input = "input_ids"
    return model


def _shapes(config: LlamaConfig, layer_name: str) -> dict[str, tuple[int, ...]]:
    """Parameter names (HF's module names, layers spelt by layer_name(i)) and shapes, lm_head excluded."""
    h, inner = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.dim, config.kv_heads * config.dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_hidden_layers):
        p = layer_name.format(i)
        shapes[p + "input_layernorm.weight"] = (h,)
        projections = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}
        for name, shape in projections.items():
            shapes[f"{p}self_attn.{name}.weight"] = shape
            if config.attention_bias:
                shapes[f"{p}self_attn.{name}.bias"] = shape[:1]
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        for name, shape in {"gate_proj": (inner, h), "up_proj": (inner, h), "down_proj": (h, inner)}.items():
            shapes[f"{p}mlp.{name}.weight"] = shape
            if config.mlp_bias:
                shapes[f"{p}mlp.{name}.bias"] = shape[:1]
    shapes["norm.weight"] = (h,)
    return shapes


def param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter key of llama(config) with its shape."""
    shapes = _shapes(config, "layers_{}.")
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    return shapes


def params_from_hf(state_dict: Mapping[str, Any], config: LlamaConfig) -> dict[str, np.ndarray]:
    """{llama(config) parameter key: NumPy array} from a LlamaForCausalLM (or LlamaModel) state dict.

    Linear weights keep torch's [out, in] layout; missing, unexpected or mis-shaped keys are refused by
    name before anything is converted.
    """
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"llama.params_from_hf: config must be a LlamaConfig, got {type(config).__name__}")
    expected = {PREFIX + k: shape for k, shape in _shapes(config, "layers.{}.").items()}
    head = {"lm_head.weight": (config.vocab_size, config.hidden_size)}
    if not config.tie_word_embeddings:
        expected.update(head)
    arrays = _hf.checked_arrays(
        "llama.params_from_hf",
        state_dict,
        expected,
        described=_describe(config),
        prefix=PREFIX,
        optional=head if config.tie_word_embeddings else None,
        ignored=BUFFERS,
    )
    params = {}
    for key in expected:
        bare = key.removeprefix(PREFIX)
        if bare.startswith("layers."):
            index, rest = bare[len("layers.") :].split(".", 1)
            bare = f"layers_{index}.{rest}"
        params[bare] = np.ascontiguousarray(arrays[key])
    return params


def _describe(config: LlamaConfig) -> str:
    return (
        f"LlamaConfig(vocab_size={config.vocab_size}, hidden_size={config.hidden_size}, "
        f"intermediate_size={config.intermediate_size}, num_hidden_layers={config.num_hidden_layers}, "
        f"num_attention_heads={config.num_attention_heads}, num_key_value_heads={config.kv_heads})"
    )


def generate(
    backend: Any,
    config: LlamaConfig,
    params: Mapping[str, Any],
    input_ids: Any,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """ids [B, T + max_new_tokens]: input_ids [B, T] followed by tokens drawn with a key/value cache (greedy at 0)."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"llama.generate: config must be a LlamaConfig, got {type(config).__name__}")
    generation.check_params("llama.generate", params, param_shapes(config))
    return generation.generate(
        backend,
        lambda chunk: llama(config, cached=True, chunk=chunk, logits_to_keep=1),
        params,
        input_ids,
        max_new_tokens,
        vocab_size=config.vocab_size,
        max_positions=config.max_position_embeddings,
        positions_name="max_position_embeddings",
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        owner="llama.generate",
        cache_key=("llama", config),
    )
