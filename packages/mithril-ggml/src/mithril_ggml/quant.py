"""Weight storage types: which parameter gets which ggml type, and conversion of the bytes.

Activations always stay float32. Under "int8"/"int4" only Linear weights whose input
dimension is a multiple of 32 (ggml's block size) become Q8_0/Q4_0; the others stay
float32 and say why in the report. Conv2d kernels become F16 under "float16" and stay
float32 under "int8"/"int4" because ggml's conv_2d cannot read a quantized kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

import ggml.ggml as G
import numpy as np

from mithril.graph import Graph

__all__ = ["QUANTIZE_MODES", "TYPE_NAMES", "choose_types", "prepare"]

QUANTIZE_MODES: dict[str | None, int] = {
    None: G.GGML_TYPE_F32,
    "float16": G.GGML_TYPE_F16,
    "int8": G.GGML_TYPE_Q8_0,
    "int4": G.GGML_TYPE_Q4_0,
}
TYPE_NAMES = {
    G.GGML_TYPE_F32: "F32",
    G.GGML_TYPE_F16: "F16",
    G.GGML_TYPE_Q8_0: "Q8_0",
    G.GGML_TYPE_Q4_0: "Q4_0",
    G.GGML_TYPE_I32: "I32",
}
_BLOCK = 32


def choose_types(
    graph: Graph, shapes: Mapping[str, tuple[int, ...]], mode: str | None
) -> dict[str, tuple[int, str]]:
    """For each parameter: (ggml type, report line)."""
    target = QUANTIZE_MODES[mode]
    out: dict[str, tuple[int, str]] = {}
    for edge in graph.params:
        uses = {(node.primitive, key) for node, key in edge.consumers}
        shape = shapes[edge.name]
        kind = G.GGML_TYPE_F32
        note = "F32"
        if target != G.GGML_TYPE_F32 and uses == {("linear", "weight")}:
            if target == G.GGML_TYPE_F16 or shape[1] % _BLOCK == 0:
                kind, note = target, TYPE_NAMES[target]
            else:
                note = f"F32 (input dimension {shape[1]} is not a multiple of {_BLOCK}, needed by {TYPE_NAMES[target]})"
        elif target != G.GGML_TYPE_F32 and uses == {("conv2d", "weight")}:
            if target == G.GGML_TYPE_F16:
                kind, note = target, "F16"
            else:
                note = f"F32 (ggml's conv_2d cannot read a {TYPE_NAMES[target]} kernel)"
        out[edge.name] = (kind, note)
    return out


def prepare(array: np.ndarray, kind: int) -> np.ndarray:
    """The bytes of `array` in ggml type `kind` (a float32/float16 array or packed blocks)."""
    data = np.ascontiguousarray(array, np.float32)
    if kind == G.GGML_TYPE_F32:
        return data
    if kind == G.GGML_TYPE_F16:
        return data.astype(np.float16)
    rows, per_row = (data.size // data.shape[-1], data.shape[-1]) if data.ndim else (1, 1)
    out = np.empty(rows * G.ggml_row_size(kind, per_row), np.uint8)
    src = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    # Uniform importance weights switch ggml to its error-minimising scale search
    # (about 10% less Q4_0 error than plain rounding); Q8_0 ignores them.
    importance = np.ones(per_row, np.float32)
    weights = importance.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    written = G.ggml_quantize_chunk(kind, src, out.ctypes.data, 0, rows, per_row, weights)
    assert written == out.nbytes, (written, out.nbytes)
    return out.reshape(rows, -1)
