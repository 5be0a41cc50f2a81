"""GGUF export: a compiled model's (quantized) weights to a file and back.

Each parameter is stored in the ggml type the compiled model uses (Q8_0, Q4_0, F16 or
F32), so a quantized model is saved exactly as it runs. The metadata key
"mithril.params" holds, as JSON, every parameter's name, NumPy shape and type name.
The file is self-contained: the state (BatchNorm running statistics) is stored as F32
tensors listed in "mithril.state", the logical model as the JSON of `ml.save_model` in
"mithril.architecture", beside the standard general.* keys (name, file_type,
quantization_version, alignment). `load_gguf` returns a `GGUFParams` dict of float32
arrays (dequantized) that also carries the stored bytes (evaluating a model with the
same quantization uses them directly, bit for bit), the state and the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from mithril.errors import KeyNotFoundError, MithrilError
from mithril.models.base import BaseModel
from mithril.serialization import model_from_dict, model_to_dict
from mithril.serialization.files import readable_path, writable_path
from mithril.zoo import gpt2

from . import gguf_gpt2
from .lowering import program_of
from .quant import TYPE_NAMES

__all__ = ["save_gguf", "load_gguf", "GGUFParams", "GGUFFileError"]

_META = "mithril.params"
_MODE = "mithril.quantize"
_STATE = "mithril.state"
_ARCH = "mithril.architecture"
# general.file_type (llama.cpp's LlamaFileType) per quantize mode
_FILE_TYPES = {
    "none": gguf.LlamaFileType.ALL_F32,
    "float16": gguf.LlamaFileType.MOSTLY_F16,
    "int8": gguf.LlamaFileType.MOSTLY_Q8_0,
    "int4": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_MAX_NAME = 63
_MAGIC = b"GGUF"


class GGUFFileError(MithrilError, ValueError):
    """A file `load_gguf` cannot read: empty, not GGUF, truncated, or missing what its metadata lists."""


class _CheckedReader(gguf.GGUFReader):
    """gguf's reader, checking that each tensor's bytes lie inside the file before viewing them."""

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        size = len(self.data)
        for field in fields:
            _, name, _, dims, raw_type, offset = field.parts
            kind = gguf.GGMLQuantizationType(int(raw_type[0]))
            block, type_size = gguf.GGML_QUANT_SIZES[kind]
            n_bytes = int(np.prod(dims)) * type_size // block
            end = int(start_offs + offset[0]) + n_bytes
            if end > size:
                raise GGUFFileError(
                    f"load_gguf: {self.data.filename!r} is truncated at tensor {bytes(name).decode()!r}: "
                    f"it needs bytes up to {end}, but the file has {size} bytes"
                )
        super()._build_tensors(start_offs, fields)


class GGUFParams(dict):
    """Parameters loaded from GGUF: float32 arrays by name, plus the stored ggml bytes.

    `stored` maps a name to (ggml type, the array handed out, the stored bytes); the
    bytes are used only while that exact array object is still the dict's value.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        stored: dict[str, tuple[int, np.ndarray, np.ndarray]],
        quantize: str | None,
        state: dict[str, np.ndarray] | None = None,
        model: BaseModel | None = None,
        config: Any = None,
    ) -> None:
        super().__init__(arrays)
        self.stored = stored
        self.quantize = quantize
        self.state = state or {}  # e.g. BatchNorm running statistics, float32
        self.model = model  # the logical model (None for files written before it was stored)
        self.config = config  # the zoo config of a transformer file (a GPT2Config for llama.cpp's gpt2), else None


def save_gguf(
    compiled: Any,
    params: dict[str, Any],
    path: str | os.PathLike[str],
    state: dict[str, Any] | None = None,
    *,
    config: Any = None,
) -> None:
    """Write `params`, converted to the storage types of `compiled`, its state and its model to a GGUF file.

    `state` defaults to `compiled.state`, else the initial state (running means 0, variances 1).
    With `config` (a `mithril.zoo.gpt2.GPT2Config`, `compiled` being gpt2(config)) the file follows
    llama.cpp's "gpt2" architecture instead of Mithril's generic layout (see `gguf_gpt2`).
    """
    program = program_of(compiled, "save_gguf")
    target = writable_path("save_gguf", path)
    missing = [n for n in program.param_names if n not in params]
    if missing:
        raise KeyNotFoundError(f"save_gguf: params is missing {missing}; expected keys {program.param_names}")
    if config is not None:
        _save_gpt2(compiled, program, params, target, config)
        return
    if state is None:
        state = compiled.state if compiled.state is not None else compiled.initial_state()
    missing = [k for k in compiled.state_keys if k not in state]
    if missing:
        raise KeyNotFoundError(f"save_gguf: state is missing {missing}; expected keys {compiled.state_keys}")
    architecture = json.dumps(model_to_dict(compiled.graph.model))  # refuses unregistered layers before writing
    arrays = tuple(np.asarray(params[n], np.float32) for n in program.param_names)
    store = program._store(tuple(a.shape for a in arrays))
    prepared = program._convert(params, arrays, store)
    mode = program.backend.quantize or "none"
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        _write(temp, compiled, program, store, arrays, prepared, mode, state, architecture)
        os.replace(temp, target)  # readers never see half a file
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _save_gpt2(compiled: Any, program: Any, params: dict[str, Any], target: Path, config: Any) -> None:
    """save_gguf with config=: llama.cpp's gpt2 layout, written to a temporary file and renamed."""
    if not isinstance(config, gpt2.GPT2Config):
        raise TypeError(
            f"save_gguf: config must be a mithril.zoo.gpt2.GPT2Config (llama.cpp's gpt2 layout), "
            f"got {type(config).__name__}; leave config=None for Mithril's generic layout"
        )
    gguf_gpt2.check_compiled(config, tuple(program.param_names), params)
    if compiled.state_keys:
        raise ValueError(f"save_gguf: gpt2(config) has no state, but the compiled model has {compiled.state_keys}")
    arrays = tuple(np.asarray(params[n], np.float32) for n in program.param_names)
    store = program._store(tuple(a.shape for a in arrays))
    prepared = program._convert(params, arrays, store)
    mode = program.backend.quantize or "none"
    kinds = {name: store.types[name][0] for name in program.param_names}
    shapes = {name: a.shape for name, a in zip(program.param_names, arrays)}
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        gguf_gpt2.write_gpt2(
            temp, config, compiled.graph.model.name or "gpt2", kinds, dict(zip(program.param_names, prepared)),
            shapes, mode, int(_FILE_TYPES.get(mode, gguf.LlamaFileType.ALL_F32)),
        )  # fmt: skip
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write(
    path: str, compiled: Any, program: Any, store: Any, arrays: tuple[np.ndarray, ...], prepared: list[np.ndarray],
    mode: str, state: dict[str, Any], architecture: str,
) -> None:  # fmt: skip
    """Write the GGUF file of `save_gguf` to `path`."""
    writer = gguf.GGUFWriter(path, arch="mithril")
    writer.add_name(compiled.graph.model.name or type(compiled.graph.model).__name__)
    writer.add_file_type(int(_FILE_TYPES.get(mode, gguf.LlamaFileType.ALL_F32)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_custom_alignment(gguf.GGUF_DEFAULT_ALIGNMENT)
    meta = []
    for i, (name, array, data) in enumerate(zip(program.param_names, arrays, prepared)):
        kind = store.types[name][0]
        tensor_name = name if len(name.encode()) <= _MAX_NAME else f"param.{i}"
        meta.append({"name": name, "tensor": tensor_name, "shape": list(array.shape), "type": TYPE_NAMES[kind]})
        if data.dtype == np.uint8:
            writer.add_tensor(tensor_name, data, raw_dtype=gguf.GGMLQuantizationType(kind))
        else:
            writer.add_tensor(tensor_name, data.reshape(array.shape) if array.ndim else data.reshape(1))
    state_meta = []
    for i, key in enumerate(compiled.state_keys):
        value = np.asarray(compiled.backend.to_numpy(state[key]), np.float32)
        tensor_name = f"mithril_state.{i}"
        state_meta.append({"name": key, "tensor": tensor_name, "shape": list(value.shape)})
        writer.add_tensor(tensor_name, value if value.ndim else value.reshape(1))
    writer.add_string(_META, json.dumps(meta))
    writer.add_string(_MODE, mode)
    writer.add_string(_STATE, json.dumps(state_meta))
    writer.add_string(_ARCH, architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _string(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        raise KeyNotFoundError(f"load_gguf: {reader.data.filename!r} has no {key!r} metadata; not a Mithril GGUF file")
    return str(field.contents())


def _open(path: str) -> gguf.GGUFReader:
    """A reader for `path`, or a GGUFFileError saying why the file is not a readable GGUF file."""
    with open(path, "rb") as file:
        head = file.read(len(_MAGIC))
    if not head:
        raise GGUFFileError(f"load_gguf: {path!r} is empty (0 bytes); it is not a GGUF file")
    if head != _MAGIC:
        raise GGUFFileError(
            f"load_gguf: {path!r} is not a GGUF file (bad magic): it starts with {head!r}, expected {_MAGIC!r}"
        )
    try:
        return _CheckedReader(path)
    except GGUFFileError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise GGUFFileError(
            f"load_gguf: {path!r} is truncated or corrupt in its header or tensor table "
            f"(the file has {os.path.getsize(path)} bytes)"
        ) from exc


def _entries(reader: gguf.GGUFReader, path: str) -> list[dict[str, Any]]:
    """The parameter list of the metadata, checked against the tensors the file holds."""
    try:
        meta = json.loads(_string(reader, _META))
        entries = [(e["name"], e["tensor"], [int(d) for d in e["shape"]]) for e in meta]
    except (ValueError, TypeError, KeyError) as exc:
        raise GGUFFileError(f"load_gguf: {path!r} has corrupt {_META!r} metadata: {exc!r}") from None
    tensors = {t.name: t for t in reader.tensors}
    missing = [name for name, tensor, _ in entries if tensor not in tensors]
    if missing:
        raise GGUFFileError(
            f"load_gguf: {path!r} is missing the tensors of parameters {missing} listed in its metadata; "
            f"it holds {sorted(tensors)}"
        )
    for name, tensor, shape in entries:
        count = int(tensors[tensor].n_elements)
        if count != int(np.prod(shape)):
            raise GGUFFileError(
                f"load_gguf: {path!r}: tensor {tensor!r} of parameter {name!r} holds {count} values, "
                f"but its metadata gives shape {shape}"
            )
    return meta


def load_gguf(path: str | os.PathLike[str]) -> GGUFParams:
    """Read a file written by `save_gguf`: float32 params that remember their stored bytes.

    A file that is empty, not GGUF, truncated or missing listed tensors raises GGUFFileError
    naming the file and the problem, before any array is read.
    """
    name = os.fspath(readable_path("load_gguf", path))
    reader = _open(name)
    if _architecture(reader) == gguf_gpt2.ARCH:
        return _load_gpt2(reader, name)
    meta = _entries(reader, name)
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
    state = {
        entry["name"]: np.array(tensors[entry["tensor"]].data, np.float32).reshape(entry["shape"])
        for entry in _state_entries(reader, name, tensors)
    }
    return GGUFParams(arrays, stored, None if mode == "none" else mode, state, _model(reader, name))


def _architecture(reader: gguf.GGUFReader) -> str | None:
    field = reader.get_field("general.architecture")
    return None if field is None else str(field.contents())


def _load_gpt2(reader: gguf.GGUFReader, path: str) -> GGUFParams:
    """load_gguf of a file in llama.cpp's gpt2 layout: gpt2(config)'s params, the model and the config."""
    config, arrays, raw, mode = gguf_gpt2.read_gpt2(reader, path)
    stored = {key: (kind, arrays[key], data) for key, (kind, data) in raw.items()}
    return GGUFParams(arrays, stored, mode, {}, gpt2.gpt2(config), config=config)


def _state_entries(reader: gguf.GGUFReader, path: str, tensors: dict[str, Any]) -> list[dict[str, Any]]:
    """The state list of the metadata (empty for older files), checked against the tensors."""
    field = reader.get_field(_STATE)
    if field is None:
        return []
    try:
        entries = json.loads(str(field.contents()))
        checked = [(e["name"], e["tensor"], int(np.prod(e["shape"]))) for e in entries]
    except (ValueError, TypeError, KeyError) as exc:
        raise GGUFFileError(f"load_gguf: {path!r} has corrupt {_STATE!r} metadata: {exc!r}") from None
    for key, tensor, count in checked:
        if tensor not in tensors or int(tensors[tensor].n_elements) != count:
            raise GGUFFileError(f"load_gguf: {path!r}: the tensor {tensor!r} of state {key!r} is missing or mis-sized")
    return entries  # type: ignore[no-any-return]


def _model(reader: gguf.GGUFReader, path: str) -> BaseModel | None:
    """The logical model stored in the file, or None for files written before it was stored."""
    field = reader.get_field(_ARCH)
    if field is None:
        return None
    try:
        return model_from_dict(json.loads(str(field.contents())))
    except ValueError as exc:
        raise GGUFFileError(f"load_gguf: {path!r} has a corrupt {_ARCH!r} architecture: {exc}") from None
