"""GGUF export: a compiled model's (quantized) weights to a file and back.

Each parameter is stored in the ggml type the compiled model uses (Q8_0, Q4_0, F16 or
F32), so a quantized model is saved exactly as it runs. The metadata key
"mithril.params" holds, as JSON, every parameter's name, NumPy shape and type name.
`load_gguf` returns a `GGUFParams` dict of float32 arrays (dequantized) that also
carries the stored bytes: evaluating a model with the same quantization uses them
directly, bit for bit, without quantizing again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import gguf
import numpy as np

from mithril.errors import KeyNotFoundError

from .lowering import program_of
from .quant import TYPE_NAMES

__all__ = ["save_gguf", "load_gguf", "GGUFParams"]

_META = "mithril.params"
_MODE = "mithril.quantize"
_MAX_NAME = 63


class GGUFParams(dict):
    """Parameters loaded from GGUF: float32 arrays by name, plus the stored ggml bytes.

    `stored` maps a name to (ggml type, the array handed out, the stored bytes); the
    bytes are used only while that exact array object is still the dict's value.
    """

    def __init__(
        self, arrays: dict[str, np.ndarray], stored: dict[str, tuple[int, np.ndarray, np.ndarray]], quantize: str | None
    ) -> None:
        super().__init__(arrays)
        self.stored = stored
        self.quantize = quantize


def save_gguf(compiled: Any, params: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `params`, converted to the storage types of `compiled`, to a GGUF file."""
    program = program_of(compiled, "save_gguf")
    missing = [n for n in program.param_names if n not in params]
    if missing:
        raise KeyNotFoundError(f"save_gguf: params is missing {missing}; expected keys {program.param_names}")
    arrays = tuple(np.asarray(params[n], np.float32) for n in program.param_names)
    store = program._store(tuple(a.shape for a in arrays))
    prepared = program._convert(params, arrays, store)
    writer = gguf.GGUFWriter(os.fspath(path), arch="mithril")
    meta = []
    for i, (name, array, data) in enumerate(zip(program.param_names, arrays, prepared)):
        kind = store.types[name][0]
        tensor_name = name if len(name.encode()) <= _MAX_NAME else f"param.{i}"
        meta.append({"name": name, "tensor": tensor_name, "shape": list(array.shape), "type": TYPE_NAMES[kind]})
        if data.dtype == np.uint8:
            writer.add_tensor(tensor_name, data, raw_dtype=gguf.GGMLQuantizationType(kind))
        else:
            writer.add_tensor(tensor_name, data.reshape(array.shape) if array.ndim else data.reshape(1))
    writer.add_string(_META, json.dumps(meta))
    writer.add_string(_MODE, program.backend.quantize or "none")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _string(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        raise KeyNotFoundError(f"load_gguf: {reader.data.filename!r} has no {key!r} metadata; not a Mithril GGUF file")
    return str(field.contents())


def load_gguf(path: str | os.PathLike[str]) -> GGUFParams:
    """Read a file written by `save_gguf`: float32 params that remember their stored bytes."""
    reader = gguf.GGUFReader(os.fspath(path))
    meta = json.loads(_string(reader, _META))
    mode = _string(reader, _MODE)
    tensors = {t.name: t for t in reader.tensors}
    arrays: dict[str, np.ndarray] = {}
    stored: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for entry in meta:
        tensor = tensors[entry["tensor"]]
        shape = tuple(entry["shape"])
        kind = int(tensor.tensor_type)
        raw = np.array(tensor.data)
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            array = raw.astype(np.float32).reshape(shape)
        else:
            array = gguf.quants.dequantize(raw, tensor.tensor_type).astype(np.float32).reshape(shape)
        arrays[entry["name"]] = array
        if kind != gguf.GGMLQuantizationType.F32:
            stored[entry["name"]] = (kind, array, raw)
    return GGUFParams(arrays, stored, None if mode == "none" else mode)
