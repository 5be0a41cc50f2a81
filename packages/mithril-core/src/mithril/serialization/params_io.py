"""Parameters and state as safetensors files, written and read by the `safetensors` package.

Parameters are stored under their keys, state under `STATE_PREFIX` + key, so that
`safetensors.numpy.load_file` reads the same keys and values. Arrays of any backend are
written; bfloat16 goes through `ml_dtypes`. The metadata names the format, the Mithril
version and the dtype.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import KeyNotFoundError, ShapeError
from .files import readable_path, writable_path, write_atomically
from .json_format import FormatError

if TYPE_CHECKING:
    from ..backend import Backend
    from ..compiler import CompiledModel

__all__ = ["STATE_PREFIX", "PARAMS_FORMAT", "save_params", "load_params", "load_state", "read_metadata"]

STATE_PREFIX = "state:"
PARAMS_FORMAT = "mithril.params"
# safetensors' dtype names -> NumPy dtype names (bfloat16 is ml_dtypes')
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def save_params(
    path: str | os.PathLike[str], params: Mapping[str, Any], state: Mapping[str, Any] | None = None
) -> None:
    """Write `params` (and `state`, e.g. BatchNorm statistics) of any backend to a safetensors file."""
    from safetensors.numpy import save  # noqa: PLC0415 - imported on first use

    from .. import __version__  # noqa: PLC0415 - the package imports this module

    target = writable_path("ml.save_params", path)
    tensors: dict[str, np.ndarray] = {}
    for group, values, prefix in (("params", params, ""), ("state", state or {}, STATE_PREFIX)):
        if not isinstance(values, Mapping):
            raise TypeError(f"ml.save_params: {group} must be a dict of key -> array, got {type(values).__name__}")
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"ml.save_params: {group} keys must be non-empty str, got {key!r}")
            if not prefix and key.startswith(STATE_PREFIX):
                raise KeyNotFoundError(
                    f"ml.save_params: params key {key!r} starts with the state prefix {STATE_PREFIX!r}"
                )
            tensors[prefix + key] = _host(value, f"{group}[{key!r}]")
    dtypes = sorted({a.dtype.name for a in tensors.values()})
    metadata = {"format": PARAMS_FORMAT, "mithril_version": __version__, "dtype": ",".join(dtypes)}
    write_atomically(target, save(tensors, metadata=metadata))


def load_params(
    path: str | os.PathLike[str], backend: Backend, *, compiled: CompiledModel | None = None
) -> dict[str, Any]:
    """The parameters of a safetensors file as arrays of `backend`.

    With `compiled`, the keys must be exactly its `param_keys` and the shapes fit its
    shapes, else KeyNotFoundError / ShapeError naming every missing, unexpected or
    mis-shaped key, before any array is converted; the result then follows its key order.
    """
    arrays = _read("ml.load_params", path)
    params = {k: v for k, v in arrays.items() if not k.startswith(STATE_PREFIX)}
    if compiled is not None:
        _check("ml.load_params", path, params, compiled, compiled.param_keys, "parameters")
        params = {key: params[key] for key in compiled.param_keys}
    return {key: _to_backend(backend, value) for key, value in params.items()}


def load_state(
    path: str | os.PathLike[str], backend: Backend, *, compiled: CompiledModel | None = None
) -> dict[str, Any]:
    """The state saved beside the parameters (keys without the prefix) as arrays of `backend`."""
    arrays = _read("ml.load_state", path)
    state = {k[len(STATE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
    if compiled is not None:
        _check("ml.load_state", path, state, compiled, compiled.state_keys, "state")
        state = {key: state[key] for key in compiled.state_keys}
    return {key: _to_backend(backend, value) for key, value in state.items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text metadata of a safetensors file (dtype, format, mithril_version), sorted by key."""
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    source = readable_path("ml.read_metadata", path)
    try:
        with safe_open(str(source), framework="numpy") as handle:
            return dict(sorted((handle.metadata() or {}).items()))
    except SafetensorError as exc:
        raise FormatError(f"{str(source)!r} is not a safetensors file ({exc})") from None


def _host(value: Any, where: str) -> np.ndarray:
    """A contiguous NumPy array of the values of a numpy, torch, jax or ggml array."""
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            return np.ascontiguousarray(tensor.float().numpy().astype(_numpy_dtype("bfloat16")))
        value = tensor.numpy()
    array = np.ascontiguousarray(np.asarray(value))
    if array.dtype.name not in _DTYPES.values():
        raise TypeError(f"ml.save_params: {where} has dtype {array.dtype.name}, which safetensors cannot hold here")
    return array


def _numpy_dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415 - only bfloat16 needs it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _read(owner: str, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of the file as a NumPy array; FormatError naming the file when it is not safetensors."""
    from safetensors import SafetensorError, deserialize  # noqa: PLC0415

    source = readable_path(owner, path)
    try:
        entries = deserialize(source.read_bytes())
    except SafetensorError as exc:
        raise FormatError(f"{owner}: {str(source)!r} is not a complete safetensors file ({exc})") from None
    arrays: dict[str, np.ndarray] = {}
    for name, info in entries:
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise FormatError(f"{owner}: {str(source)!r}: tensor {name!r} has dtype {info['dtype']}, not supported")
        arrays[name] = np.frombuffer(info["data"], dtype=_numpy_dtype(dtype)).reshape(info["shape"]).copy()
    return arrays


def _to_backend(backend: Backend, value: np.ndarray) -> Any:
    if value.dtype.name == "bfloat16":
        from ..dtypes import bfloat16  # noqa: PLC0415

        dtype = bfloat16 if backend.dtype is bfloat16 else None
        return backend.array(value.astype(np.float32), dtype)
    return backend.array(value)


def _check(
    owner: str,
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    compiled: CompiledModel,
    keys: list[str],
    what: str,
) -> None:
    """Refuse a file whose keys or shapes do not fit `compiled`, naming every key that is off."""
    model = compiled.graph.model.describe()
    missing = [k for k in keys if k not in arrays]
    unexpected = sorted(k for k in arrays if k not in keys)
    if missing or unexpected:
        raise KeyNotFoundError(
            f"{owner}({str(path)!r}) for {model}: the file's {what} do not match the model's: "
            f"missing {missing}, unexpected {unexpected}; the model expects {keys}"
        )
    wrong = []
    for key in keys:
        expected = compiled.shapes.get(key, ())
        given = arrays[key].shape
        if "..." in expected:
            continue
        if len(expected) != len(given) or any(isinstance(e, int) and e != g for e, g in zip(expected, given)):
            wrong.append(f"{key!r}: expected {list(expected)}, got {list(given)}")
    if wrong:
        raise ShapeError(f"{owner}({str(path)!r}) for {model}: mis-shaped {what}: " + "; ".join(wrong))
