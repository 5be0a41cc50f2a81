"""GPT-2 in GGUF with llama.cpp's gpt2 conventions: gguf's reader sees llama.cpp's names, shapes and metadata,
and load_gguf gives back a model and params that generate the same greedy tokens."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import mithril as ml
import mithril_ggml
from mithril.errors import KeyNotFoundError
from mithril.zoo import gpt2

CONFIG = gpt2.GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=4, layer_norm_epsilon=1e-5)
PROMPT = np.array([[3, 17, 42, 5, 88]])


def _random_params(config: gpt2.GPT2Config) -> dict[str, np.ndarray]:
    compiled = ml.compile(gpt2.gpt2(config), ml.NumpyBackend(), {"input_ids": [1, 4]})
    params = compiled.randomize_params(seed=0)
    return {k: np.asarray(v, np.float32) * 4 for k, v in params.items()}  # larger weights: varied tokens


def _save(tmp_path: Path, quantize: str | None, config: gpt2.GPT2Config = CONFIG) -> tuple[Path, dict, ml.Backend]:
    backend = ml.GGMLBackend() if quantize is None else ml.GGMLBackend(quantize=quantize)
    params = _random_params(config)
    compiled = ml.compile(gpt2.gpt2(config), backend, {"input_ids": [1, 4]}, inference=True)
    path = tmp_path / "gpt2.gguf"
    mithril_ggml.save_gguf(compiled, params, path, config=config)
    return path, params, backend


def test_gguf_reader_sees_llama_cpp_gpt2_names_shapes_and_metadata(tmp_path: Path) -> None:
    path, params, _ = _save(tmp_path, None)
    reader = gguf.GGUFReader(str(path))
    e, inner = CONFIG.n_embd, CONFIG.inner
    assert reader.get_field("general.architecture").contents() == "gpt2"
    metadata = {
        "gpt2.context_length": 32,
        "gpt2.embedding_length": e,
        "gpt2.block_count": 2,
        "gpt2.feed_forward_length": inner,
        "gpt2.attention.head_count": 4,
    }
    for key, value in metadata.items():
        assert reader.get_field(key).contents() == value, key
    assert reader.get_field("gpt2.attention.layer_norm_epsilon").contents() == pytest.approx(1e-5)
    assert reader.get_field("general.file_type").contents() == 0
    # gguf's constants name llama.cpp's tensors for MODEL_ARCH.GPT2; GGUF dims are NumPy's reversed.
    expected = {"token_embd.weight": [e, 96], "position_embd.weight": [e, 32]}
    expected.update({"output_norm.weight": [e], "output_norm.bias": [e]})
    for i in range(2):
        b = f"blk.{i}."
        expected.update({f"{b}attn_norm.weight": [e], f"{b}attn_norm.bias": [e]})
        expected.update({f"{b}attn_qkv.weight": [e, 3 * e], f"{b}attn_qkv.bias": [3 * e]})
        expected.update({f"{b}attn_output.weight": [e, e], f"{b}attn_output.bias": [e]})
        expected.update({f"{b}ffn_norm.weight": [e], f"{b}ffn_norm.bias": [e]})
        expected.update({f"{b}ffn_up.weight": [e, inner], f"{b}ffn_up.bias": [inner]})
        expected.update({f"{b}ffn_down.weight": [inner, e], f"{b}ffn_down.bias": [e]})
    tensors = {t.name: t for t in reader.tensors}
    assert {n: [int(d) for d in t.shape] for n, t in tensors.items()} == expected
    arch = gguf.MODEL_ARCH.GPT2
    known = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[arch] for i in range(2)}
    assert {name.rsplit(".", 1)[0] for name in tensors} <= known
    qkv = np.array(tensors["blk.0.attn_qkv.weight"].data)
    np.testing.assert_array_equal(qkv, params["h_0.attn.c_attn.weight"])  # q, k and v rows, as llama.cpp packs them
    np.testing.assert_array_equal(np.array(tensors["blk.1.ffn_up.weight"].data), params["h_1.mlp.c_fc.weight"])


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_load_gguf_generates_the_same_greedy_tokens(quantize: str | None, tmp_path: Path) -> None:
    path, params, backend = _save(tmp_path, quantize)
    loaded = mithril_ggml.load_gguf(path)
    assert loaded.config == CONFIG and loaded.quantize == quantize
    assert loaded.model is not None and set(loaded) == set(gpt2.param_shapes(CONFIG))
    if quantize is None:
        for key, value in params.items():
            np.testing.assert_array_equal(loaded[key], value)
    expected = gpt2.generate(backend, CONFIG, params, PROMPT, max_new_tokens=12)
    got = gpt2.generate(backend, loaded.config, loaded, PROMPT, max_new_tokens=12)
    np.testing.assert_array_equal(got, expected)
    assert len(set(expected[0, 5:].tolist())) > 1
    compiled = ml.compile(loaded.model, backend, {"input_ids": [1, 5]}, inference=True)
    logits = compiled.evaluate(loaded, {"input_ids": PROMPT})["logits"]
    assert np.argmax(np.asarray(logits)[0, -1]) == expected[0, 5]


def test_untied_head_is_stored_as_output_weight(tmp_path: Path) -> None:
    config = gpt2.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, tie_word_embeddings=False)
    path, params, backend = _save(tmp_path, "int8", config)
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "output.weight" in names
    loaded = mithril_ggml.load_gguf(path)
    assert loaded.config == config
    ids = gpt2.generate(backend, config, params, PROMPT % 64, max_new_tokens=6)
    np.testing.assert_array_equal(gpt2.generate(backend, config, loaded, PROMPT % 64, max_new_tokens=6), ids)


def test_a_llama_cpp_file_without_mithril_metadata_reads_from_the_gpt2_keys(tmp_path: Path) -> None:
    path, params, backend = _save(tmp_path, None)
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "plain.gguf"), arch="gpt2")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length"):
        getattr(writer, f"add_{key}")(int(reader.get_field(f"gpt2.{key}").contents()))
    writer.add_head_count(4)
    writer.add_layer_norm_eps(1e-5)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = mithril_ggml.load_gguf(tmp_path / "plain.gguf")
    assert loaded.quantize is None
    assert (loaded.config.n_embd, loaded.config.n_layer, loaded.config.vocab_size) == (64, 2, 96)
    expected = gpt2.generate(backend, CONFIG, params, PROMPT, max_new_tokens=8)
    np.testing.assert_array_equal(gpt2.generate(backend, loaded.config, loaded, PROMPT, max_new_tokens=8), expected)


def test_bad_gpt2_saves_are_refused_naming_the_argument(tmp_path: Path) -> None:
    backend = ml.GGMLBackend()
    params = _random_params(CONFIG)
    compiled = ml.compile(gpt2.gpt2(CONFIG), backend, {"input_ids": [1, 4]}, inference=True)
    with pytest.raises(TypeError, match="config must be a mithril.zoo.gpt2.GPT2Config"):
        mithril_ggml.save_gguf(compiled, params, tmp_path / "a.gguf", config={"n_layer": 2})
    deeper = gpt2.GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=3, n_head=4)
    with pytest.raises(KeyNotFoundError, match="missing parameter keys.*h_2"):
        mithril_ggml.save_gguf(compiled, params, tmp_path / "b.gguf", config=deeper)
    assert not list(tmp_path.iterdir())
