"""Calibrated quantization: tune int8/int4 weights to the inputs a model will really see.

`calibrate(compiled, params, inputs)` runs the float32 model on calibration inputs,
gathers the Gram matrix X^T X of every quantized linear layer's input, and hands them to
the compiled model, which from then on quantizes weights with GPTQ (`quant.gptq`)
instead of rounding them one by one. Like llama.cpp's importance matrix, the statistics
belong to the compiled model: later params objects are quantized with them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from mithril.backend import CompileOptions
from mithril.graph import Edge

from . import quant
from .lowering import GGMLProgram, program_of
from .ops import OPS

__all__ = ["calibrate"]


def calibrate(
    compiled: Any,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    state: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Tune the quantization of `compiled` (int8/int4 GGML) to `inputs`; returns rows seen per weight.

    inputs: one inputs dict, as `evaluate` takes, or an iterable of them (batches).
    state: for models with state (BatchNorm), as `apply` takes; default the model's own.
    The next `evaluate` with any params re-quantizes its weights using these statistics.
    """
    program = program_of(compiled, "calibrate")
    owner = program.graph.model.describe()
    mode = program.backend.quantize
    if mode not in ("int8", "int4"):
        raise ValueError(
            f"calibrate: {owner} is compiled with GGMLBackend(quantize={mode!r}); "
            "calibration tunes 'int8' or 'int4' weights"
        )
    batches: list[Mapping[str, Any]] = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise TypeError(f"calibrate: inputs must be an inputs dict or a non-empty iterable of them, got {inputs!r}")
    if compiled.state_keys:
        state = state if state is not None else compiled.state or compiled.initial_state()
        batches = [{**batch, **state} for batch in batches]
    program._check(params, batches[0])  # names any missing or mis-shaped key before work starts
    shapes = {n: tuple(np.shape(params[n])) for n in program.param_names}
    taps = _quantized_layer_inputs(program, shapes)
    reference = GGMLProgram(
        type(program.backend)(n_threads=program.backend.n_threads), program.graph, CompileOptions(inference=True)
    )
    edges = tuple(dict.fromkeys(e for group in taps.values() for e in group))
    gram = {name: np.zeros((shapes[name][1],) * 2) for name in taps}
    rows = dict.fromkeys(taps, 0)
    for batch in batches:
        values = reference.activations(params, batch, edges)
        for name, group in taps.items():
            for edge in group:
                x = values[edge.name].reshape(-1, shapes[name][1]).astype(np.float64)
                gram[name] += x.T @ x
                rows[name] += len(x)
    program.calibrate(gram, rows)
    return rows


def _quantized_layer_inputs(program: GGMLProgram, shapes: dict[str, tuple[int, ...]]) -> dict[str, list[Edge]]:
    """For each weight stored as Q8_0/Q4_0: the input edges its users multiply it with (`Quantized.calibrated_by`)."""
    types = quant.choose_types(program.graph, shapes, program.backend.quantize)
    quantized = {n for n, (kind, _) in types.items() if kind in quant.BLOCK_TYPES}
    taps: dict[str, list[Edge]] = {}
    for node in program.graph.nodes:
        for read in OPS[node.primitive].quantized_inputs:
            weight = node.inputs.get(read.key)
            if weight is not None and weight.name in quantized and read.calibrated_by is not None:
                taps.setdefault(weight.name, []).append(node.inputs[read.calibrated_by])
    return taps
