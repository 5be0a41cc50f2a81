"""GPT-2 as a Mithril model: Hugging Face's config fields, weights from a GPT2LMHeadModel state dict, generation.

The model's parameter keys follow HF's module names: "wte.weight", "wpe.weight",
"h_<i>.ln_1.weight", "h_<i>.attn.c_attn.weight" (q, k and v packed along the output rows as HF's
c_attn, [3 * n_embd, n_embd] like torch.nn.Linear: one matrix product for the three),
"h_<i>.attn.c_proj.weight", "h_<i>.mlp.c_fc.weight",
"h_<i>.mlp.c_proj.weight", "ln_f.weight", and "lm_head.weight" only when embeddings are not tied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..models.attention import Arange
from ..models.base import Model
from ..models.layers import GELU, Add, Dropout, Embedding, LayerNorm, Linear, ReLU, SiLU, Tanh
from ..models.sequence import Chunk
from . import _hf, generation

__all__ = ["GPT2Config", "gpt2", "params_from_hf", "param_shapes", "generate"]

ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none", "relu": "", "silu": "", "swish": ""}
ACTIVATIONS["tanh"] = ""


@dataclass(frozen=True)
class GPT2Config:
    """Hugging Face's GPT2Config fields that define the network (defaults: GPT-2 small)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _positive(name, getattr(self, name))
        if self.n_inner is not None:
            _positive("n_inner", self.n_inner)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT2Config: n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config: activation_function {self.activation_function!r} is not supported; "
                f"choose one of {sorted(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"GPT2Config: {name} must be a probability in [0, 1), got {p!r}")

    @property
    def inner(self) -> int:
        """The MLP's hidden width: n_inner, or 4 * n_embd."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_hf(cls, config: Any) -> GPT2Config:
        """The fields of a transformers GPT2Config (or any object or dict with those attributes)."""
        get = config.get if isinstance(config, Mapping) else lambda name, default: getattr(config, name, default)
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"GPT2Config: {name} must be an int >= 1, got {value!r}")


def _activation(config: GPT2Config) -> Any:
    name = config.activation_function
    if name in ("relu",):
        return ReLU()
    if name in ("silu", "swish"):
        return SiLU()
    if name == "tanh":
        return Tanh()
    return GELU(approximate=ACTIVATIONS[name])


def _dropout(model: Model, p: float, input: str, output: str) -> str:
    """Dropout(p) from input to output when p > 0; returns the key holding the result."""
    if p == 0:
        return input
    model |= Dropout(p)(input=input, output=output)
    return output


def _block(config: GPT2Config, index: int, cached: bool, chunk: int) -> Model:
    """One transformer block: ln_1, attention (c_attn into q, k, v, causal heads, c_proj), residual, ln_2, MLP,
    residual."""
    e, eps = config.n_embd, config.layer_norm_epsilon
    block = Model(name=f"h_{index}")
    block |= LayerNorm(e, eps=eps, name="ln_1")(input="input", output="normed_1")
    attn = Model(name="attn")
    attn |= Linear(3 * e, name="c_attn")(input="input", output="qkv")
    attn |= Chunk(3, dim=-1)(input="qkv", output0="q", output1="k", output2="v")
    scale = 1 / math.sqrt(e // config.n_head) if config.scale_attn_weights else 1.0
    if config.scale_attn_by_inverse_layer_idx:
        scale /= index + 1
    generation.attention(
        attn, config.n_head, scale=scale, cached=cached, chunk=chunk, query="q", key="k", value="v", output="heads"
    )
    attn |= Linear(e, name="c_proj")(input="heads", output="output")
    block |= attn(input="normed_1", output="attended")
    attended = _dropout(block, config.resid_pdrop, "attended", "attended_dropped")
    block |= Add()(left="input", right=attended, output="residual_1")
    block |= LayerNorm(e, eps=eps, name="ln_2")(input="residual_1", output="normed_2")
    mlp = Model(name="mlp")
    mlp |= Linear(config.inner, name="c_fc")(input="input", output="hidden")
    mlp |= _activation(config)(input="hidden", output="activated")
    mlp |= Linear(e, name="c_proj")(input="activated", output="output")
    block |= mlp(input="normed_2", output="mlp_out")
    mlp_out = _dropout(block, config.resid_pdrop, "mlp_out", "mlp_dropped")
    block |= Add()(left="residual_1", right=mlp_out, output="output")
    return block


def gpt2(config: GPT2Config, *, cached: bool = False, chunk: int = 1, logits_to_keep: int = 0) -> Model:
    """GPT2LMHeadModel: input "input_ids" [B, T] (int) -> output "logits" [B, T, vocab_size].

    cached=True builds the step model reading `chunk` tokens per call with a key/value cache
    (mithril.zoo.generation's protocol: inputs "position_ids" and each block's past_key/past_value/
    cache_mask), with the same parameter keys. logits_to_keep > 0 computes the logits of the last
    positions only, as HF's argument (generation keeps 1). Dropout layers exist only for nonzero resid_pdrop/
    embd_pdrop; attention dropout (attn_pdrop) is not applied.
    """
    if not isinstance(config, GPT2Config):
        raise TypeError(f"gpt2: config must be a GPT2Config, got {type(config).__name__}")
    model = Model()
    model |= Embedding(config.vocab_size, config.n_embd, name="wte")(
        input="input_ids", weight="wte.weight", output="token_embeds"
    )
    if not cached:
        model |= Arange(dim=1)(like="input_ids", output="position_ids")
    model |= Embedding(config.n_positions, config.n_embd, name="wpe")(input="position_ids", output="position_embeds")
    model |= Add()(left="token_embeds", right="position_embeds", output="embeds")
    hidden = _dropout(model, config.embd_pdrop, "embeds", "embeds_dropped")
    for index in range(config.n_layer):
        model |= _block(config, index, cached, chunk)(input=hidden, output=f"hidden_{index}")
        hidden = f"hidden_{index}"
    hidden = generation.keep_last(model, hidden, logits_to_keep, "gpt2")
    model |= LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, name="ln_f")(input=hidden, output="final")
    head = Linear(config.vocab_size, bias=False, name="lm_head")
    if config.tie_word_embeddings:
        model |= head(input="final", weight="wte.weight", output="logits")
    else:
        model |= head(input="final", output="logits")
    model.canonical_input = "input_ids"
    return model


def param_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter key of gpt2(config) with its shape."""
    e, inner = config.n_embd, config.inner
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (config.vocab_size, e),
        "wpe.weight": (config.n_positions, e),
    }
    for i in range(config.n_layer):
        p = f"h_{i}."
        shapes.update({p + "ln_1.weight": (e,), p + "ln_1.bias": (e,)})
        shapes.update({p + "attn.c_attn.weight": (3 * e, e), p + "attn.c_attn.bias": (3 * e,)})
        shapes.update({p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,)})
        shapes.update({p + "ln_2.weight": (e,), p + "ln_2.bias": (e,)})
        shapes.update({p + "mlp.c_fc.weight": (inner, e), p + "mlp.c_fc.bias": (inner,)})
        shapes.update({p + "mlp.c_proj.weight": (e, inner), p + "mlp.c_proj.bias": (e,)})
    shapes.update({"ln_f.weight": (e,), "ln_f.bias": (e,)})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, e)
    return shapes


def _hf_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of HF's GPT2LMHeadModel (without the "transformer." prefix)."""
    e, inner = config.n_embd, config.inner
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (config.vocab_size, e), "wpe.weight": (config.n_positions, e)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes.update({p + "ln_1.weight": (e,), p + "ln_1.bias": (e,)})
        shapes.update({p + "attn.c_attn.weight": (e, 3 * e), p + "attn.c_attn.bias": (3 * e,)})
        shapes.update({p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,)})
        shapes.update({p + "ln_2.weight": (e,), p + "ln_2.bias": (e,)})
        shapes.update({p + "mlp.c_fc.weight": (e, inner), p + "mlp.c_fc.bias": (inner,)})
        shapes.update({p + "mlp.c_proj.weight": (inner, e), p + "mlp.c_proj.bias": (e,)})
    shapes.update({"ln_f.weight": (e,), "ln_f.bias": (e,)})
    return shapes


BUFFERS = ("attn.bias", "attn.masked_bias")  # HF's causal-mask buffers in older checkpoints: not parameters
PREFIX = "transformer."


def params_from_hf(state_dict: Mapping[str, Any], config: GPT2Config) -> dict[str, np.ndarray]:
    """{gpt2(config) parameter key: NumPy array} from a GPT2LMHeadModel (or GPT2Model) state dict.

    HF's Conv1D weights ([in, out]) are transposed to Linear's [out, in]. Missing, unexpected or mis-shaped keys are
    refused by name before anything is converted.
    """
    if not isinstance(config, GPT2Config):
        raise TypeError(f"gpt2.params_from_hf: config must be a GPT2Config, got {type(config).__name__}")
    expected = {PREFIX + k: shape for k, shape in _hf_shapes(config).items()}
    head = {"lm_head.weight": (config.vocab_size, config.n_embd)}
    if not config.tie_word_embeddings:
        expected.update(head)
    arrays = _hf.checked_arrays(
        "gpt2.params_from_hf",
        state_dict,
        expected,
        described=_describe(config),
        prefix=PREFIX,
        optional=head if config.tie_word_embeddings else None,
        ignored=BUFFERS,
    )
    return _convert({k.removeprefix(PREFIX): v for k, v in arrays.items()}, config)


def _convert(hf: dict[str, np.ndarray], config: GPT2Config) -> dict[str, np.ndarray]:
    """Rename and transpose checked HF arrays into gpt2(config)'s parameters."""
    out = {"wte.weight": hf["wte.weight"], "wpe.weight": hf["wpe.weight"]}
    for i in range(config.n_layer):
        src, dst = f"h.{i}.", f"h_{i}."
        for norm in ("ln_1", "ln_2"):
            out[f"{dst}{norm}.weight"] = hf[f"{src}{norm}.weight"]
            out[f"{dst}{norm}.bias"] = hf[f"{src}{norm}.bias"]
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[f"{dst}{layer}.weight"] = hf[f"{src}{layer}.weight"].T
            out[f"{dst}{layer}.bias"] = hf[f"{src}{layer}.bias"]
    out["ln_f.weight"], out["ln_f.bias"] = hf["ln_f.weight"], hf["ln_f.bias"]
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    return {key: np.ascontiguousarray(value) for key, value in out.items()}


def _describe(config: GPT2Config) -> str:
    return (
        f"GPT2Config(vocab_size={config.vocab_size}, n_positions={config.n_positions}, n_embd={config.n_embd}, "
        f"n_layer={config.n_layer}, n_head={config.n_head}, n_inner={config.n_inner})"
    )


def generate(
    backend: Any,
    config: GPT2Config,
    params: Mapping[str, Any],
    input_ids: Any,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """ids [B, T + max_new_tokens]: input_ids [B, T] followed by tokens drawn with a key/value cache (greedy at 0)."""
    if not isinstance(config, GPT2Config):
        raise TypeError(f"gpt2.generate: config must be a GPT2Config, got {type(config).__name__}")
    generation.check_params("gpt2.generate", params, param_shapes(config))
    return generation.generate(
        backend,
        lambda chunk: gpt2(config, cached=True, chunk=chunk, logits_to_keep=1),
        params,
        input_ids,
        max_new_tokens,
        vocab_size=config.vocab_size,
        max_positions=config.n_positions,
        positions_name="n_positions",
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        owner="gpt2.generate",
        cache_key=("gpt2", config),
    )
