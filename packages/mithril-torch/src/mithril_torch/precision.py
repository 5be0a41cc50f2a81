"""The compile option `precision` on CUDA: torch's TF32 switches set for a compiled model's calls only.

torch keeps them process-wide: `torch.backends.cuda.matmul` (cuBLAS, off by default) and
`torch.backends.cudnn.conv` (cuDNN convolutions, TF32 by default). A call of a model compiled
with precision "highest" or "high" sets both, runs, and puts back what was there before, under
a process-wide switch: calls needing the same setting share it, a call needing the other one
waits until none is running, and the user's settings return when the last call ends. They are
set through torch's older API (`set_float32_matmul_precision`, `cudnn.allow_tf32`), which also
updates the newer `fp32_precision` one; both are saved and restored, so either reads as before.
CPUs have no TF32 kernels, so CPU programs never switch.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = ["Fp32Switch", "SWITCH", "tf32_settings"]

_C: Any = torch._C


def tf32_settings() -> tuple[Any, ...]:
    """Everything the switch changes, as torch reports it (None where torch refuses to read a legacy flag).

    torch raises when the legacy flags are read after the newer API set them differently; the
    newer API's values are always readable.
    """
    try:
        legacy: tuple[Any, ...] = (_C._get_float32_matmul_precision(), _C._get_cudnn_allow_tf32())
    except RuntimeError:
        legacy = (None, None)
    newer = (_C._get_fp32_precision_getter("cuda", "matmul"), _C._get_fp32_precision_getter("cuda", "conv"))
    return (*legacy, *newer)


def _apply(precision: str) -> None:
    """cuBLAS and cuDNN float32 at full precision ("highest") or TF32 ("high")."""
    _C._set_float32_matmul_precision("highest" if precision == "highest" else "high")
    _C._set_cudnn_allow_tf32(precision != "highest")


def _restore(saved: tuple[Any, ...]) -> None:
    """Put back `tf32_settings()` as saved: the legacy flags first (they overwrite the newer ones), then the newer."""
    matmul, cudnn, new_matmul, new_conv = saved
    if matmul is not None:
        _C._set_float32_matmul_precision(matmul)
        _C._set_cudnn_allow_tf32(cudnn)
    _C._set_fp32_precision_setter("cuda", "matmul", new_matmul)
    _C._set_fp32_precision_setter("cuda", "conv", new_conv)


class Fp32Switch:
    """Sets torch's TF32 flags for running calls; the first call in saves the user's, the last out restores them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._precision: str | None = None
        self._running = 0
        self._saved: tuple[Any, ...] = ()

    def enter(self, precision: str) -> None:
        """Before a call: set `precision` ("highest" or "high"), waiting while calls with the other one run."""
        with self._cond:
            while self._running and self._precision != precision:
                self._cond.wait()
            if not self._running:
                self._saved = tf32_settings()
                _apply(precision)
                self._precision = precision
            self._running += 1

    def exit(self) -> None:
        """After a call (also one that raised): the last call out restores the user's settings."""
        with self._cond:
            self._running -= 1
            if not self._running:
                _restore(self._saved)
                self._precision = None
                self._cond.notify_all()


SWITCH = Fp32Switch()
