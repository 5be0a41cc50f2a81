"""Weight storage types: which parameter gets which ggml type, and conversion of the bytes.

Activations always stay float32. Which parameters may be stored quantized is said by the
`quantized_inputs` of each primitive's `OPS` entry: under "int8"/"int4" Linear weights whose
input dimension is a multiple of 32 (ggml's block size) become Q8_0/Q4_0; the others stay
float32 and say why in the report. Conv kernels become F16 under "float16" and stay
float32 under "int8"/"int4" because the im2col convolution cannot read a quantized kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

import ggml.ggml as G
import numpy as np

from mithril.graph import Graph

from .ops import OPS, Quantized

__all__ = ["QUANTIZE_MODES", "TYPE_NAMES", "BLOCK_TYPES", "choose_types", "prepare", "keep_block_sums", "gptq"]

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


def choose_types(graph: Graph, shapes: Mapping[str, tuple[int, ...]], mode: str | None) -> dict[str, tuple[int, str]]:
    """For each parameter: (ggml type, report line); a parameter is quantized when every use reads it so."""
    target = QUANTIZE_MODES[mode]
    out: dict[str, tuple[int, str]] = {}
    for edge in graph.params:
        reads = [_quantized_read(node.primitive, key) for node, key in edge.consumers]
        usable = [r for r in reads if r is not None]
        shape = shapes[edge.name]
        kind, note = G.GGML_TYPE_F32, "F32"
        if target == G.GGML_TYPE_F32 or not reads or len(usable) < len(reads):
            pass
        elif target == G.GGML_TYPE_F16:
            kind, note = target, TYPE_NAMES[target]
        elif refused := next((r.blocks_refused for r in usable if r.blocks_refused), None):
            note = f"F32 ({refused.format(type=TYPE_NAMES[target])})"
        elif shape[-1] % _BLOCK:
            note = f"F32 (input dimension {shape[-1]} is not a multiple of {_BLOCK}, needed by {TYPE_NAMES[target]})"
        else:
            kind, note = target, TYPE_NAMES[target]
        out[edge.name] = (kind, note)
    return out


def _quantized_read(primitive: str, key: str) -> Quantized | None:
    """How `primitive` reads its input `key` quantized (its `OPS` entry), or None when only as float32."""
    return next((q for q in OPS[primitive].quantized_inputs if q.key == key), None)


def prepare(array: np.ndarray, kind: int, hessian: np.ndarray | None = None) -> np.ndarray:
    """The bytes of `array` in ggml type `kind` (a float32/float16 array or packed blocks).

    Q8_0/Q4_0 weights [out, in] are rounded so the output error is small, not only the
    weight error: with `hessian` (the Gram matrix of the layer's calibration inputs,
    [in, in]) by GPTQ; without it, each block keeps the sum of its weights (see
    `keep_block_sums`).
    """
    data = np.ascontiguousarray(array, np.float32)
    if kind == G.GGML_TYPE_F32:
        return data
    if kind == G.GGML_TYPE_F16:
        return data.astype(np.float16)
    rows, per_row = (data.size // data.shape[-1], data.shape[-1]) if data.ndim else (1, 1)
    matrix = data.reshape(rows, per_row)
    if hessian is not None:
        scales, levels = gptq(matrix, hessian, kind)
        return _encode(scales, levels, kind).reshape(rows, -1)
    out = np.empty((rows, G.ggml_row_size(kind, per_row)), np.uint8)
    step = max(1, _CHUNK_WEIGHTS // per_row)  # blocks are row-local: chunks of rows bound the temporaries
    for start in range(0, rows, step):
        part = matrix[start : start + step]
        scales, levels = _decode(_ggml_quantize(part, kind), kind)
        levels = keep_block_sums(part.reshape(levels.shape), scales, levels, kind)
        out[start : start + step] = _encode(scales, levels, kind).reshape(len(part), -1)
    return out


# -- block formats ---------------------------------------------------------------------
# Q8_0 and Q4_0 store blocks of 32 weights as one float16 scale d and 32 integer levels q,
# weight = d * q. Q8_0 keeps q as int8 in [-127, 127]; Q4_0 packs q + 8 as nibbles, q in
# [-8, 7], low nibbles holding the block's first 16 weights and high nibbles the rest.
_LEVELS = {G.GGML_TYPE_Q8_0: (-127, 127), G.GGML_TYPE_Q4_0: (-8, 7)}
_CHUNK_WEIGHTS = 1 << 20  # weights rounded at a time: a 124M-parameter model's wte peaks at tens of MB, not GB
BLOCK_TYPES = frozenset(_LEVELS)


def _ggml_quantize(matrix: np.ndarray, kind: int) -> np.ndarray:
    """ggml's own quantization of a float32 [rows, per_row] matrix, as bytes per row."""
    rows, per_row = matrix.shape
    out = np.empty((rows, G.ggml_row_size(kind, per_row)), np.uint8)
    src = matrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    # Uniform importance weights switch ggml to its error-minimising scale search
    # (about 10% less Q4_0 error than plain rounding); Q8_0 ignores them.
    importance = np.ones(per_row, np.float32)
    weights = importance.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    written = G.ggml_quantize_chunk(kind, src, out.ctypes.data, 0, rows, per_row, weights)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def _decode(raw: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales [blocks] (float32) and levels [blocks, 32] (int8) of packed blocks."""
    blocks = raw.reshape(-1, G.ggml_row_size(kind, _BLOCK))
    scales = blocks[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
    body = blocks[:, 2:]
    if kind == G.GGML_TYPE_Q8_0:
        return scales, body.view(np.int8).copy()
    nibbles = np.concatenate([body & 0xF, body >> 4], axis=1)
    return scales, nibbles.astype(np.int8) - 8


def _encode(scales: np.ndarray, levels: np.ndarray, kind: int) -> np.ndarray:
    """Packed blocks of `kind` from scales [blocks] and levels [blocks, 32]."""
    blocks = np.empty((len(scales), G.ggml_row_size(kind, _BLOCK)), np.uint8)
    blocks[:, :2] = scales.astype(np.float16)[:, None].view(np.uint8)
    if kind == G.GGML_TYPE_Q8_0:
        blocks[:, 2:] = levels.astype(np.int8).view(np.uint8)
    else:
        shifted = (levels + 8).astype(np.uint8)
        blocks[:, 2:] = shifted[:, :16] | (shifted[:, 16:] << 4)
    return blocks


# -- rounding for a small output error -------------------------------------------------
def keep_block_sums(weights: np.ndarray, scales: np.ndarray, levels: np.ndarray, kind: int) -> np.ndarray:
    """Levels re-rounded so each block's quantized sum is as close as possible to its true sum.

    A layer's output error is (W - Wq) x. Inputs after ReLU-like activations share a large
    positive mean, and with the block sums kept, that common part of x meets no error.
    The fewest, cheapest flips do it: round(|residual| / |d|) weights of a block, those
    whose rounding error points the residual's way, move one level. This costs little
    weight error and removes about a sixth (MLP) to a third (CNN) of the quick start
    models' int4 output error; weights: [blocks, 32], scales: [blocks].
    """
    low, high = _LEVELS[kind]
    errors = weights - scales[:, None] * levels
    residual = errors.sum(axis=1)
    size = np.abs(scales)
    flips = np.rint(np.abs(residual) / np.where(size > 0, size, np.inf)).astype(np.int64)
    step = (np.sign(residual) * np.sign(scales)).astype(np.int8)[:, None]
    moved = levels + step
    allowed = (moved >= low) & (moved <= high) & (step != 0)
    # Flipping a weight whose error is e (signed the residual's way) changes its squared
    # error by d^2 - 2|d|e: the largest such errors are the cheapest. Few blocks need more
    # than three flips, so take the best remaining one per round.
    gain = np.where(allowed, errors * np.sign(residual)[:, None], -np.inf)
    out = levels.copy()
    active = np.flatnonzero(flips > 0)
    for _ in range(_BLOCK):
        if not len(active):
            break
        best = np.argmax(gain[active], axis=1)
        ok = np.isfinite(gain[active, best])
        active, best = active[ok], best[ok]
        out[active, best] = moved[active, best]
        gain[active, best] = -np.inf
        flips[active] -= 1
        active = active[flips[active] > 0]
    return out


def gptq(weights: np.ndarray, hessian: np.ndarray, kind: int, damping: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al., 2022) in ggml's block format: scales [blocks], levels [blocks, 32].

    Columns are rounded one at a time and the error each leaves is spread over the columns
    not yet rounded, weighted by the inverse `hessian` (the Gram matrix of calibration
    inputs), which minimises the error of the layer's outputs on inputs like those rather
    than the error of the weights. Each block's scale is ggml's choice for the block's
    weights as they stand when the block is reached.
    """
    low, high = _LEVELS[kind]
    work = weights.astype(np.float64)
    rows, cols = work.shape
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(cols)] += damping * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    scales = np.empty((rows, cols // _BLOCK), np.float32)
    levels = np.empty((rows, cols // _BLOCK, _BLOCK), np.int8)
    for b in range(cols // _BLOCK):
        lo, hi = b * _BLOCK, (b + 1) * _BLOCK
        block_scales, _ = _decode(_ggml_quantize(work[:, lo:hi].astype(np.float32), kind), kind)
        safe = np.where(block_scales == 0, 1.0, block_scales)
        spread = np.empty((rows, _BLOCK))
        for j in range(_BLOCK):
            c = lo + j
            q = np.clip(np.rint(work[:, c] / safe), low, high)
            spread[:, j] = (work[:, c] - block_scales * q) / upper[c, c]
            work[:, c + 1 : hi] -= np.outer(spread[:, j], upper[c, c + 1 : hi])
            levels[:, b, j] = q
        work[:, hi:] -= spread @ upper[lo:hi, hi:]
        scales[:, b] = block_scales
    return scales.reshape(-1), levels.reshape(-1, _BLOCK)
