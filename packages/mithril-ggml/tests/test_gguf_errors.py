"""load_gguf names the file and what is wrong with it: empty, not GGUF, truncated, corrupt or incomplete."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

import mithril as ml
import mithril_ggml
from mithril.models import Linear, Model, Relu
from mithril_ggml.gguf_io import GGUFFileError


def _saved(tmp_path: Path, quantize: str | None) -> bytes:
    """The bytes of a small MLP's GGUF file, with weights stored as `quantize` says."""
    model = Model()
    model += Linear(64)
    model += Relu()
    model += Linear(8)
    compiled = ml.compile(model, mithril_ggml.GGMLBackend(quantize=quantize), {"input": [2, 32]})
    path = tmp_path / "model.gguf"
    mithril_ggml.save_gguf(compiled, compiled.randomize_params(seed=0), path)
    return path.read_bytes()


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "broken.gguf"
    path.write_bytes(data)
    return path


def test_an_empty_file_is_named_empty(tmp_path: Path) -> None:
    path = _write(tmp_path, b"")
    with pytest.raises(GGUFFileError, match=rf"{path.name}' is empty \(0 bytes\)"):
        mithril_ggml.load_gguf(path)


def test_a_file_of_another_format_has_bad_magic(tmp_path: Path) -> None:
    path = _write(tmp_path, b"PK\x03\x04 a zip file, say")
    with pytest.raises(GGUFFileError, match=rf"{path.name}' is not a GGUF file \(bad magic\): it starts with b'PK"):
        mithril_ggml.load_gguf(path)


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("keep", [10, 100, 600])
def test_a_file_cut_in_its_header_is_named_truncated(tmp_path: Path, quantize: str | None, keep: int) -> None:
    path = _write(tmp_path, _saved(tmp_path, quantize)[:keep])
    with pytest.raises(GGUFFileError, match=rf"{path.name}' is truncated or corrupt .*has {keep} bytes"):
        mithril_ggml.load_gguf(path)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_file_cut_in_its_tensor_data_names_the_tensor(tmp_path: Path, quantize: str | None) -> None:
    data = _saved(tmp_path, quantize)
    for keep, tensor in [(len(data) // 2, "linear_0.weight"), (len(data) - 10, "linear_1.bias")]:
        path = _write(tmp_path, data[:keep])
        with pytest.raises(GGUFFileError, match=rf"truncated at tensor '{tensor}'.*the file has {keep} bytes"):
            mithril_ggml.load_gguf(path)


def _rewrite(tmp_path: Path, meta: object, tensors: dict[str, np.ndarray]) -> Path:
    """A GGUF file with the given parameter metadata and float32 tensors."""
    path = tmp_path / "edited.gguf"
    writer = gguf.GGUFWriter(str(path), arch="mithril")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.add_string("mithril.params", json.dumps(meta))
    writer.add_string("mithril.quantize", "none")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_tensor_the_metadata_lists_but_the_file_lacks_is_named(tmp_path: Path) -> None:
    meta = [
        {"name": "w", "tensor": "w", "shape": [2, 3], "type": "F32"},
        {"name": "b", "tensor": "b", "shape": [2], "type": "F32"},
    ]
    path = _rewrite(tmp_path, meta, {"w": np.ones((2, 3), np.float32)})
    with pytest.raises(GGUFFileError, match=r"missing the tensors of parameters \['b'\].*it holds \['w'\]"):
        mithril_ggml.load_gguf(path)


def test_a_tensor_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    meta = [{"name": "w", "tensor": "w", "shape": [4, 3], "type": "F32"}]
    path = _rewrite(tmp_path, meta, {"w": np.ones((2, 3), np.float32)})
    with pytest.raises(GGUFFileError, match=r"tensor 'w' of parameter 'w' holds 6 values, but .* shape \[4, 3\]"):
        mithril_ggml.load_gguf(path)


def test_corrupt_metadata_is_named(tmp_path: Path) -> None:
    path = _rewrite(tmp_path, [{"name": "w"}], {"w": np.ones((2, 3), np.float32)})
    with pytest.raises(GGUFFileError, match=r"corrupt 'mithril.params' metadata"):
        mithril_ggml.load_gguf(path)


def test_an_intact_file_still_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, _saved(tmp_path, "int8"))
    loaded = mithril_ggml.load_gguf(path)
    assert sorted(loaded) == ["linear_0.bias", "linear_0.weight", "linear_1.bias", "linear_1.weight"]
    assert loaded.quantize == "int8"


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    compiled = ml.compile(Linear(3), mithril_ggml.GGMLBackend(), {"input": [2, 4]})
    params = compiled.randomize_params(seed=0)
    with pytest.raises(FileNotFoundError, match=r"save_gguf: cannot write .*nope.*: directory .*nope' does not exist"):
        mithril_ggml.save_gguf(compiled, params, tmp_path / "nope" / "m.gguf")
    with pytest.raises(FileNotFoundError, match=r"load_gguf: no file .*absent.gguf"):
        mithril_ggml.load_gguf(tmp_path / "absent.gguf")


def test_a_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    compiled = ml.compile(Linear(3), mithril_ggml.GGMLBackend(), {"input": [2, 4]})
    params = compiled.randomize_params(seed=0)
    path = tmp_path / "m.gguf"
    mithril_ggml.save_gguf(compiled, params, path)
    before = path.read_bytes()
    with pytest.raises(ml.KeyNotFoundError):
        mithril_ggml.save_gguf(compiled, {"weight": params["weight"]}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
