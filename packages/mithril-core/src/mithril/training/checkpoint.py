"""Training checkpoints: one safetensors file with params, model state, optimizer state and a JSON header.

Tensors are stored as `params/<key>`, `model_state/<key>` and `opt_state/<key>`, and the
backend's random generator state as `rng_state` (where the backend exposes it); the header
(safetensors metadata, all strings) names the format, the Mithril version, the model, the
optimizer with its hyper-parameters, the step count and the dtype.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import KeyNotFoundError, MithrilError, ShapeError
from ..serialization.files import readable_path, writable_path
from .state import TrainState

__all__ = ["FORMAT", "read_checkpoint", "write_checkpoint"]

FORMAT = "mithril.checkpoint/1"
SECTIONS = ("params", "model_state", "opt_state")
RNG = "rng_state"


def write_checkpoint(
    path: str | os.PathLike[str], state: TrainState, header: Mapping[str, Any], to_numpy: Any, rng: Any = None
) -> None:
    """Write `state` and the generator state `rng` to `path` (arrays through `to_numpy`), `header` as metadata."""
    from safetensors.numpy import save_file  # noqa: PLC0415 - only checkpoints need it

    target = writable_path("Trainer.save", path)

    tensors = {
        f"{section}/{key}": np.ascontiguousarray(to_numpy(value))
        for section in SECTIONS
        for key, value in getattr(state, section).items()
    }
    if rng is not None:
        tensors[RNG] = np.ascontiguousarray(rng)
    meta = {
        "format": FORMAT,
        "mithril_version": _version(),
        "step": str(state.step),
        **{key: json.dumps(value) for key, value in header.items()},
    }
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, temp, metadata=meta)
        os.replace(temp, target)  # a crash mid-write leaves the previous checkpoint intact
    except BaseException:
        os.unlink(temp)
        raise


def read_checkpoint(
    path: str | os.PathLike[str], expected: Mapping[str, Mapping[str, tuple[int, ...]]], header: Mapping[str, Any]
) -> tuple[dict[str, dict[str, np.ndarray]], int, np.ndarray | None]:
    """The sections, step and generator state of the checkpoint at `path`, checked against `expected` and `header`.

    Raises, before returning anything, when the file is not a checkpoint, its header names
    another model or optimizer, or its keys or shapes differ (every mismatch is named).
    """
    from safetensors import safe_open  # noqa: PLC0415 - only checkpoints need it

    where = os.fspath(readable_path("Trainer.load", path))
    try:
        with safe_open(where, framework="numpy") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error types for unreadable files
        raise MithrilError(f"{where}: not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise MithrilError(
            f"{where}: not a Mithril training checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    for key, want in header.items():
        got = json.loads(meta.get(key, "null"))
        if got != json.loads(json.dumps(want)):
            raise MithrilError(f"{where}: the checkpoint's {key} is {got!r}, but this trainer's is {want!r}")
    rng = tensors.pop(RNG, None)
    sections: dict[str, dict[str, np.ndarray]] = {section: {} for section in SECTIONS}
    for name, value in tensors.items():
        section, _, key = name.partition("/")
        if section not in sections:
            raise MithrilError(f"{where}: unexpected tensor {name!r} (sections are {list(SECTIONS)})")
        sections[section][key] = value
    problems = []
    for section in SECTIONS:
        have, want = sections[section], expected[section]
        problems += [f"missing {section} key {k!r}" for k in want if k not in have]
        problems += [f"unexpected {section} key {k!r}" for k in have if k not in want]
        problems += [
            f"{section} key {k!r} has shape {list(have[k].shape)}, expected {list(want[k])}"
            for k in want
            if k in have and tuple(have[k].shape) != tuple(want[k])
        ]
    if problems:
        error = ShapeError if all("shape" in p for p in problems) else KeyNotFoundError
        raise error(f"{where}: the checkpoint does not fit this trainer: " + "; ".join(problems))
    return sections, int(meta.get("step", "0")), rng


def _version() -> str:
    try:
        return metadata.version("mithril")
    except metadata.PackageNotFoundError:
        return "unknown"
