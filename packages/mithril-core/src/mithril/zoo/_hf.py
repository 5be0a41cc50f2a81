"""Reading Hugging Face state dicts: tensors to NumPy and key checks that name what does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_numpy(owner: str, name: str, value: Any) -> np.ndarray:
    """A torch tensor or NumPy array as a NumPy array (bfloat16 as float32), without importing torch."""
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return np.asarray(tensor.numpy())
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"{owner}: state_dict[{name!r}] must be a torch tensor or NumPy array, got {type(value).__name__}")


def checked_arrays(
    owner: str,
    state_dict: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    *,
    described: str,
    prefix: str = "",
    optional: Mapping[str, tuple[int, ...]] | None = None,
    ignored: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """{HF key: NumPy array} for every expected (and present optional) key, refusing missing, unexpected and
    mis-shaped keys by name before converting anything; keys may also come without `prefix` (the base model's)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{owner}: state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    known = {**expected, **(optional or {})}
    found: dict[str, tuple[str, Any]] = {}
    extra = []
    for key, value in state_dict.items():
        full = key if key in known or not prefix else prefix + key
        if full in known:
            found[full] = (key, value)
        elif not (ignored and key.endswith(ignored)):
            extra.append(key)
    missing = [k for k in expected if k not in found]
    if missing or extra:
        more_missing, more_extra = " ..." if len(missing) > 8 else "", " ..." if len(extra) > 8 else ""
        raise KeyError(
            f"{owner}: the state dict does not fit {described}: missing keys {missing[:8]}{more_missing}, "
            f"unexpected keys {extra[:8]}{more_extra}"
        )
    for full, (key, value) in found.items():
        shape = tuple(getattr(value, "shape", ()))
        if shape != known[full]:
            raise ValueError(
                f"{owner}: state_dict[{key!r}] has shape {list(shape)}, expected {list(known[full])} for {described}"
            )
    return {full: to_numpy(owner, key, value) for full, (key, value) in found.items()}
