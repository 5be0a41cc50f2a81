"""The NumPy backend: CPU only, float16/32/64, gradients from VJP rules."""

from __future__ import annotations

from typing import Any

import numpy as np

import mithril as ml
from mithril.backend import Backend, CompileOptions
from mithril.dtypes import DType
from mithril.graph import Graph
from mithril.host_arrays import HostArrays

from .lowering import NumpyProgram
from .ops import OPS

__all__ = ["NumpyBackend"]


class NumpyBackend(HostArrays, Backend):
    """Runs compiled models as generated NumPy code on the CPU."""

    name = "numpy"
    supported_dtypes = (ml.float16, ml.float32, ml.float64)
    supports_gradients = True
    supports_jit = False
    ops = OPS

    def __init__(self, dtype: DType | str = ml.float32, device: str = "cpu", **options: Any) -> None:
        self.reject_unknown(options)
        if device != "cpu":
            raise ValueError(f"NumpyBackend: device {device!r} is not available; NumPy runs on 'cpu' only")
        super().__init__(dtype, device)
        self._rng = np.random.default_rng()

    # -- lowering ----------------------------------------------------------------------
    def lower(self, graph: Graph, options: CompileOptions) -> NumpyProgram:
        return NumpyProgram(self, graph, options)
