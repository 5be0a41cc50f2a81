"""The GGML backend: float32 CPU graphs, optional quantized weights, gradients from the core's backward graph."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions
from mithril.dtypes import DType
from mithril.graph import Graph
from mithril.host_arrays import HostArrays

from .lowering import FrozenArray, GGMLProgram, is_frozen
from .ops import OPS
from .quant import QUANTIZE_MODES

__all__ = ["GGMLBackend"]

# Graphs with fewer multiply-accumulates than this run on one thread: waking more
# threads costs more than it saves on small matrices.
SMALL_GRAPH_MACS = 2_000_000


class GGMLBackend(HostArrays, Backend):
    """Runs compiled models as static ggml graphs on the CPU; arrays are host NumPy arrays.

    quantize: None (float32 weights), "float16", "int8" (ggml Q8_0) or "int4" (Q4_0);
    activations stay float32. n_threads: threads per graph; None uses one thread for
    small graphs and every available core otherwise.
    """

    name = "ggml"
    supported_dtypes = (ml.float32,)
    supports_gradients = True
    supports_jit = False
    ops = OPS  # type: ignore[assignment]
    quantize_modes = tuple(QUANTIZE_MODES)

    def __init__(
        self,
        dtype: DType | str = ml.float32,
        quantize: str | None = None,
        n_threads: int | None = None,
        device: str = "cpu",
        **options: Any,
    ) -> None:
        self.reject_unknown(options)
        if device != "cpu":
            raise ValueError(f"GGMLBackend: device {device!r} is not available; this backend runs on 'cpu' only")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"GGMLBackend: quantize must be one of {list(QUANTIZE_MODES)}, got {quantize!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"GGMLBackend: n_threads must be a positive int or None, got {n_threads!r}")
        super().__init__(dtype, device)
        self.quantize = quantize
        self.n_threads = n_threads
        self._rng = np.random.default_rng()

    def __repr__(self) -> str:
        return f"GGMLBackend(dtype={self.dtype!r}, quantize={self.quantize!r}, n_threads={self.n_threads!r})"

    def array(self, data: Any, dtype: DType | None = None) -> np.ndarray:
        """As HostArrays.array, but an array from `frozen` that needs no conversion is returned as it is."""
        if is_frozen(data):
            target = self.dtype if dtype is None and data.dtype.kind in "fV" else dtype
            if target is None or self.dtype_of(data) == target:
                return data  # type: ignore[no-any-return]
        return super().array(data, dtype)

    def frozen(self, array: Any) -> np.ndarray:
        """A read-only view of `array` that compiled models trust unchanged: converted (quantized) weights are
        loaded from it once, not compared with a snapshot on every call. The caller promises that nothing
        writes its memory, through any other array, while compiled models use it. A frozen array is returned
        as it is, so weights frozen once keep their converted form across calls and programs."""
        if is_frozen(array):
            return array  # type: ignore[no-any-return]
        view = np.asarray(array).view(FrozenArray)
        view.flags.writeable = False
        return view

    def threads_for(self, macs: int) -> int:
        """Threads for a graph of `macs` multiply-accumulates (the user's n_threads when given)."""
        if self.n_threads is not None:
            return self.n_threads
        if macs < SMALL_GRAPH_MACS:
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> GGMLProgram:
        return GGMLProgram(self, graph, options)
