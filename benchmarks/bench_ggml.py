"""Per-call cost of compiled models on the GGML backend against the NumPy backend, and of quantized weights."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402

Row = tuple[str, float, float, float, "float | None"]


def mlp(sizes: list[int]):  # type: ignore[no-untyped-def]
    from mithril.models import Linear, Model, Relu

    model = Model()
    model |= Linear(dimension=sizes[0])
    for size in sizes[1:]:
        model += Relu()
        model += Linear(dimension=size)
    return model


def small_rows() -> list[Row]:
    """The quick start MLP (20-64-10) at batch 32: float32 GGML against the NumPy backend."""
    import mithril as ml

    model = mlp([64, 10])
    numpy = ml.compile(model, ml.NumpyBackend(), shapes={"input": [32, 20]})
    params = numpy.randomize_params(seed=0)
    x = {"input": ml.NumpyBackend().randn(32, 20)}
    rows: list[Row] = []
    for threads in (None, 1, 2):
        ggml = ml.compile(model, ml.GGMLBackend(n_threads=threads), shapes={"input": [32, 20]})
        label = "auto" if threads is None else str(threads)
        rows.append(
            (
                f"MLP 20-64-10 b32 fwd, ggml f32 ({label} thr)",
                *compare(lambda g=ggml: g.evaluate(params, x), lambda: numpy.evaluate(params, x)),
                1.0 if threads is None else None,
            )
        )
    ggml = ml.compile(model, ml.GGMLBackend(), shapes={"input": [32, 20]})
    grads = {"output": ml.NumpyBackend().randn(32, 10)}
    rows.append(
        (
            "MLP 20-64-10 b32 fwd+bwd, ggml f32",
            *compare(lambda: ggml.evaluate(params, x, grads), lambda: numpy.evaluate(params, x, grads)),
            None,
        )
    )
    return rows


def _against_numpy(name: str, build: Callable[[], Any], shape: list[int], *, forward: bool) -> list[Row]:
    """Float32 GGML against the NumPy backend for one model in training mode: fwd (if asked) and fwd+bwd."""
    import mithril as ml

    numpy = ml.compile(build(), ml.NumpyBackend(), shapes={"input": shape})
    ggml = ml.compile(build(), ml.GGMLBackend(), shapes={"input": shape})
    params = numpy.randomize_params(seed=0)
    x = {"input": ml.NumpyBackend().randn(*shape)}
    grads = {"output": ml.NumpyBackend().randn(shape[0], 10)}
    rows: list[Row] = []
    if forward:
        rows.append(
            (
                f"{name} fwd, ggml f32",
                *compare(lambda: ggml.evaluate(params, x), lambda: numpy.evaluate(params, x)),
                None,
            )
        )
    rows.append(
        (
            f"{name} fwd+bwd, ggml f32",
            *compare(lambda: ggml.evaluate(params, x, grads), lambda: numpy.evaluate(params, x, grads)),
            None,
        )
    )
    return rows


def cnn_rows() -> list[Row]:
    """The quick start CNN (batch 32, 3x32x32: fwd+bwd) and quickstart_cnn1d (batch 32, 4x64: fwd, fwd+bwd)."""
    from mithril.testing.models import quickstart_cnn, quickstart_cnn1d

    return _against_numpy("CNN 3x32x32 b32", quickstart_cnn, [32, 3, 32, 32], forward=False) + _against_numpy(
        "1-D CNN 4x64 b32", quickstart_cnn1d, [32, 4, 64], forward=True
    )


def memory_bound_rows(threads: int | None) -> list[Row]:
    """Three 4096x4096 layers at batch 1: weight reads dominate, so smaller weights should win.

    GGML gets the weights as `backend.frozen` views, as a deployment that will not write them hands them
    over: otherwise every call reads the float32 sources too, to see writes made in place since the last.
    """
    import mithril as ml

    model = mlp([4096, 4096, 4096])
    numpy = ml.compile(model, ml.NumpyBackend(), shapes={"input": [1, 4096]}, inference=True)
    params = numpy.randomize_params(seed=1)
    x = {"input": ml.NumpyBackend().randn(1, 4096)}
    runs = {}
    for mode in (None, "float16", "int8", "int4"):
        backend = ml.GGMLBackend(quantize=mode, n_threads=threads)
        compiled = ml.compile(model, backend, shapes={"input": [1, 4096]}, static_inference=True)
        frozen = {key: backend.frozen(value) for key, value in params.items()}
        start = time.perf_counter()
        compiled.evaluate(frozen, x)
        print(f"first call with quantize={mode!r} (converts the weights once): {time.perf_counter() - start:.3f} s")
        runs[mode] = lambda c=compiled, frozen=frozen: c.evaluate(frozen, x)
    ref = lambda: numpy.evaluate(params, x)  # noqa: E731
    threads_label = "all cores" if threads is None else f"{threads} thr"
    return [
        (f"4096^2 x3 b1 {threads_label}: ggml f32 vs numpy", *compare(runs[None], ref), None),
        (f"4096^2 x3 b1 {threads_label}: ggml float16 vs ggml f32", *compare(runs["float16"], runs[None]), None),
        (f"4096^2 x3 b1 {threads_label}: ggml int8 vs ggml f32", *compare(runs["int8"], runs[None]), 0.5),
        (f"4096^2 x3 b1 {threads_label}: ggml int4 vs ggml int8", *compare(runs["int4"], runs["int8"]), 1.0),
        (f"4096^2 x3 b1 {threads_label}: ggml int8 vs numpy", *compare(runs["int8"], ref), None),
        (f"4096^2 x3 b1 {threads_label}: ggml int4 vs numpy", *compare(runs["int4"], ref), None),
    ]


AccuracyRow = tuple[str, float, float, "float | None"]


def accuracy_rows(seeds: int = 5) -> list[AccuracyRow]:
    """Relative output error (mean, max over seeds) of quantized quick start models against float32 GGML.

    Errors are measured on held-out inputs; "calibrated" runs mithril_ggml.calibrate on 512 other samples first.
    """
    import numpy as np

    import mithril as ml
    import mithril_ggml
    from mithril.testing.models import quickstart_cnn, quickstart_mlp

    models = {"MLP 20-64-10 b32": (quickstart_mlp, [32, 20]), "CNN 3x16x16 b8": (quickstart_cnn, [8, 3, 16, 16])}
    modes = [
        ("float16", False, None),
        ("int8", False, 0.01),
        ("int8", True, 0.01),
        ("int4", False, 0.05),
        ("int4", True, 0.05),
    ]
    rows: list[AccuracyRow] = []
    for name, (build, size) in models.items():
        base = ml.compile(build(), ml.GGMLBackend(), shapes={"input": size}, static_inference=True)
        for mode, calibrated, target in modes:
            errors = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                quantized = ml.compile(
                    build(), ml.GGMLBackend(quantize=mode), shapes={"input": size}, static_inference=True
                )
                params = base.randomize_params(seed=seed)
                if calibrated:
                    samples = [{"input": rng.standard_normal(size).astype(np.float32)} for _ in range(512 // size[0])]
                    mithril_ggml.calibrate(quantized, params, samples)
                x = {"input": rng.standard_normal(size).astype(np.float32)}
                want = base.evaluate(params, x)["output"]
                errors.append(
                    float(np.linalg.norm(quantized.evaluate(params, x)["output"] - want) / np.linalg.norm(want))
                )
            rows.append(
                (f"{name}, {mode}{' calibrated' if calibrated else ''}", float(np.mean(errors)), max(errors), target)
            )
    return rows


def print_accuracy(rows: list[AccuracyRow]) -> None:
    print("\nQuantized vs float32 output: relative error over 5 seeds (calibrated: 512 samples, GPTQ)")
    print(f"{'case':44s} {'mean':>8s} {'max':>8s}  target")
    for label, mean, worst, target in rows:
        verdict = "" if target is None else f"{target:.2f}  {'ok' if worst < target else 'MISS'}"
        print(f"{label:44s} {mean:8.4f} {worst:8.4f}  {verdict}")


def main() -> None:
    t0 = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"GGML backend benchmark, {cores} available cores")
    print_table("Small MLP: GGML float32 vs NumPy backend (ratio < 1: GGML faster)", small_rows())
    print_table("CNNs, training mode: GGML float32 vs NumPy backend (ratio < 1: GGML faster)", cnn_rows())
    for threads in (1, None):
        label = "all cores" if threads is None else f"{threads} thread"
        print_table(
            f"Memory-bound MLP, {label}: quantized weights (ratio = first / second)", memory_bound_rows(threads)
        )
    print_accuracy(accuracy_rows())
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
