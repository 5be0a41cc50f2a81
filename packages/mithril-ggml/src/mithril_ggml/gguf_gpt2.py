"""GPT-2 in GGUF with llama.cpp's conventions for the "gpt2" architecture.

The file carries `general.architecture = "gpt2"`, the gpt2.* hyperparameters (context_length,
embedding_length, block_count, feed_forward_length, attention.head_count,
attention.layer_norm_epsilon) and llama.cpp's tensor names: token_embd, position_embd,
blk.N.attn_norm, blk.N.attn_qkv (q, k and v packed along the output rows, as gpt2's c_attn), blk.N.attn_output,
blk.N.ffn_norm, blk.N.ffn_up, blk.N.ffn_down, output_norm and output (only for untied heads).
Weights are [out, in] as llama.cpp's converter writes them (GGUF dims [in, out]). Mithril adds
"mithril.config" (every GPT2Config field, as JSON) and "mithril.quantize"; a file without them
(e.g. from llama.cpp's converter) is read from the gpt2.* keys and the tensor shapes.
Quantized weights are written as stored bytes: the file holds exactly what the compiled model runs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import gguf
import numpy as np

from mithril.errors import KeyNotFoundError
from mithril.zoo import gpt2 as zoo_gpt2

from .quant import BLOCK_TYPES, TYPE_NAMES

__all__ = ["ARCH", "gguf_names", "write_gpt2", "read_gpt2"]

ARCH = "gpt2"
_CONFIG = "mithril.config"
_MODE = "mithril.quantize"
_MODES = {
    int(gguf.LlamaFileType.ALL_F32): "none",
    int(gguf.LlamaFileType.MOSTLY_F16): "float16",
    int(gguf.LlamaFileType.MOSTLY_Q8_0): "int8",
    int(gguf.LlamaFileType.MOSTLY_Q4_0): "int4",
}


def gguf_names(config: zoo_gpt2.GPT2Config) -> dict[str, str]:
    """{llama.cpp tensor name: the Mithril parameter key stored in it}."""
    names = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight"}
    for i in range(config.n_layer):
        blk, h = f"blk.{i}.", f"h_{i}."
        for part in ("weight", "bias"):
            names[f"{blk}attn_norm.{part}"] = f"{h}ln_1.{part}"
            names[f"{blk}attn_qkv.{part}"] = f"{h}attn.c_attn.{part}"
            names[f"{blk}attn_output.{part}"] = f"{h}attn.c_proj.{part}"
            names[f"{blk}ffn_norm.{part}"] = f"{h}ln_2.{part}"
            names[f"{blk}ffn_up.{part}"] = f"{h}mlp.c_fc.{part}"
            names[f"{blk}ffn_down.{part}"] = f"{h}mlp.c_proj.{part}"
    names["output_norm.weight"], names["output_norm.bias"] = "ln_f.weight", "ln_f.bias"
    if not config.tie_word_embeddings:
        names["output.weight"] = "lm_head.weight"
    return names


def check_compiled(config: zoo_gpt2.GPT2Config, param_names: tuple[str, ...], params: dict[str, Any]) -> None:
    """Refuse a compiled model or params that are not gpt2(config)'s, naming the keys, before writing."""
    expected = zoo_gpt2.param_shapes(config)
    missing = sorted(set(expected) - set(param_names))
    extra = sorted(set(param_names) - set(expected))
    if missing or extra:
        raise KeyNotFoundError(
            f"save_gguf: config={zoo_gpt2._describe(config)} asks for llama.cpp's gpt2 layout, but the compiled "
            f"model is not gpt2(config): missing parameter keys {missing[:8]}, unexpected keys {extra[:8]}"
        )
    for key, shape in expected.items():
        given = tuple(np.shape(params[key]))
        if given != shape:
            raise ValueError(f"save_gguf: params[{key!r}] has shape {list(given)}, expected {list(shape)} for config")


def write_gpt2(
    path: str, config: zoo_gpt2.GPT2Config, name: str, kinds: dict[str, int], prepared: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]], mode: str, file_type: int,
) -> None:  # fmt: skip
    """Write GPT-2's parameters (`prepared`: their stored bytes or arrays, of ggml type `kinds`) to `path`."""
    writer = gguf.GGUFWriter(path, arch=ARCH)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_custom_alignment(gguf.GGUF_DEFAULT_ALIGNMENT)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.inner)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_string(_CONFIG, json.dumps(dataclasses.asdict(config)))
    writer.add_string(_MODE, mode)
    for tensor, key in gguf_names(config).items():
        data = prepared[key]
        if data.dtype == np.uint8:
            rows = shapes[key][0]
            writer.add_tensor(tensor, data.reshape(rows, -1), raw_dtype=gguf.GGMLQuantizationType(kinds[key]))
        else:
            writer.add_tensor(tensor, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _field(reader: gguf.GGUFReader, path: str, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise KeyNotFoundError(f"load_gguf: {path!r} is a gpt2 file without the {key!r} metadata llama.cpp needs")
    return field.contents()


def _config(reader: gguf.GGUFReader, path: str, tensors: dict[str, Any]) -> zoo_gpt2.GPT2Config:
    """The GPT2Config of the file: Mithril's own, else from llama.cpp's gpt2.* keys and the tensor shapes."""
    stored = reader.get_field(_CONFIG)
    if stored is not None:
        try:
            return zoo_gpt2.GPT2Config(**json.loads(str(stored.contents())))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"load_gguf: {path!r} has corrupt {_CONFIG!r} metadata: {exc}") from None
    if "token_embd.weight" not in tensors:
        raise KeyNotFoundError(f"load_gguf: {path!r} is a gpt2 file without the tensor 'token_embd.weight'")
    return zoo_gpt2.GPT2Config(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        n_positions=int(_field(reader, path, f"{ARCH}.context_length")),
        n_embd=int(_field(reader, path, f"{ARCH}.embedding_length")),
        n_layer=int(_field(reader, path, f"{ARCH}.block_count")),
        n_head=int(_field(reader, path, f"{ARCH}.attention.head_count")),
        n_inner=int(_field(reader, path, f"{ARCH}.feed_forward_length")),
        layer_norm_epsilon=float(_field(reader, path, f"{ARCH}.attention.layer_norm_epsilon")),
        tie_word_embeddings="output.weight" not in tensors,
    )


def read_gpt2(
    reader: gguf.GGUFReader, path: str
) -> tuple[zoo_gpt2.GPT2Config, dict[str, np.ndarray], dict[str, tuple[int, np.ndarray]], str | None]:
    """(config, float32 params by Mithril key, {key: (ggml type, stored bytes)} of non-F32 ones, quantize mode)."""
    tensors = {t.name: t for t in reader.tensors}
    config = _config(reader, path, tensors)
    names = gguf_names(config)
    missing = [t for t in names if t not in tensors]
    extra = [t for t in tensors if t not in names]
    if missing or extra:
        raise KeyNotFoundError(
            f"load_gguf: {path!r} does not hold GPT-2's tensors for {zoo_gpt2._describe(config)}: "
            f"missing {missing[:8]}, unexpected {extra[:8]}"
        )
    shapes = zoo_gpt2.param_shapes(config)
    arrays: dict[str, np.ndarray] = {}
    stored: dict[str, tuple[int, np.ndarray]] = {}
    for tensor_name, key in names.items():
        tensor = tensors[tensor_name]
        kind = int(tensor.tensor_type)
        expected = shapes[key]
        if int(tensor.n_elements) != int(np.prod(expected)):
            raise ValueError(
                f"load_gguf: {path!r}: tensor {tensor_name!r} holds {int(tensor.n_elements)} values, "
                f"expected shape {list(expected)} from the gpt2 metadata"
            )
        raw = np.array(tensor.data).reshape(expected[0], -1) if len(expected) > 1 else np.array(tensor.data)
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            arrays[key] = raw.astype(np.float32).reshape(expected)
        elif kind in BLOCK_TYPES:
            arrays[key] = (
                gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(kind)).astype(np.float32).reshape(expected)
            )
        else:
            raise ValueError(
                f"load_gguf: {path!r}: tensor {tensor_name!r} has ggml type {tensor.tensor_type.name}; "
                f"Mithril runs {sorted(TYPE_NAMES.values())}"
            )
        if kind != gguf.GGMLQuantizationType.F32:
            stored[key] = (kind, np.ascontiguousarray(raw))
    mode_field = reader.get_field(_MODE)
    if mode_field is not None:
        mode = str(mode_field.contents())
    else:
        file_type = reader.get_field("general.file_type")
        mode = _MODES.get(int(file_type.contents()), "none") if file_type is not None else "none"
    return config, arrays, stored, None if mode == "none" else mode
