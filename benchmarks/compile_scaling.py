"""Compile-time scaling: logical model construction and ml.compile for N-layer MLPs and a ResNet-18.

`python benchmarks/compile_scaling.py --backend numpy` times one backend in this process and
prints a table; `--json` prints the measurements as one JSON object instead (report.py runs
one such process per backend).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from resnet import resnet18  # noqa: E402

import mithril as ml  # noqa: E402
from mithril.models import Linear, Model, Relu  # noqa: E402

LAYERS = (10, 100, 1000)
WIDTH = 32
BATCH = 16
RESNET_SHAPE = [1, 3, 224, 224]
TARGETS = {"ratio_1000_100": 12.0, "quickstart_cnn_numpy_s": 0.010, "mlp_1000_s": 2.0}


def mlp(layers: int) -> Model:
    """An MLP of `layers` Linear(WIDTH)+Relu pairs, composed with |= and +=."""
    model = Model()
    model |= Linear(dimension=WIDTH)
    model += Relu()
    for _ in range(layers - 1):
        model += Linear(dimension=WIDTH)
        model += Relu()
    return model


def _backend(name: str) -> ml.Backend:
    """A float32 backend instance by registry name."""
    return getattr(ml, ml.available_backends()[name].attr)(dtype=ml.float32)


def _block(result: Any) -> None:
    """Wait for asynchronous (JAX) results."""
    for value in result.values():
        if hasattr(value, "block_until_ready"):
            value.block_until_ready()


def measure(build: Callable[[], Model], backend_name: str, shape: list[int], repeats: int) -> dict[str, float]:
    """Median seconds of construction and ml.compile over `repeats` fresh models; first calls once.

    The first gradient call is timed on its own: NumPy generates its backward pass then, JAX traces it.
    """
    backend = _backend(backend_name)
    builds, compiles = [], []
    compiled = None
    for _ in range(repeats):
        start = time.perf_counter()
        model = build()
        built = time.perf_counter()
        compiled = ml.compile(model, backend, shapes={"input": shape})
        builds.append(built - start)
        compiles.append(time.perf_counter() - built)
    assert compiled is not None
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(*shape)}
    start = time.perf_counter()
    _block(compiled.evaluate(params, x))
    first = time.perf_counter() - start
    start = time.perf_counter()
    outputs = compiled.evaluate(params, x)
    _block(outputs)
    second = time.perf_counter() - start
    seeds = {key: backend.ones(*backend.to_numpy(value).shape) for key, value in outputs.items()}
    start = time.perf_counter()
    _block(compiled.evaluate(params, x, seeds)[1])
    first_grad = time.perf_counter() - start
    return {
        "build_s": statistics.median(builds),
        "compile_s": statistics.median(compiles),
        "first_call_s": first,
        "second_call_s": second,
        "first_grad_call_s": first_grad,
        "repeats": repeats,
    }


def run(backend_name: str) -> dict[str, Any]:
    """Every compile-time measurement for one backend."""
    from mithril.testing.models import quickstart_cnn

    result: dict[str, Any] = {"backend": backend_name, "mlp": {}}
    for layers in LAYERS:
        repeats = 3 if layers >= 1000 else 7
        result["mlp"][layers] = measure(lambda n=layers: mlp(n), backend_name, [BATCH, WIDTH], repeats)
    result["resnet18"] = measure(resnet18, backend_name, RESNET_SHAPE, 3)
    result["quickstart_cnn"] = measure(quickstart_cnn, backend_name, [32, 3, 32, 32], 15)
    return result


def print_result(result: dict[str, Any]) -> None:
    """The measurements of one backend as a fixed-width table."""
    print(f"\nCompile time on {result['backend']} (medians; first calls once)")
    print(f"{'model':<24} {'construct':>11} {'ml.compile':>11} {'first call':>11} {'2nd call':>11} {'1st grad':>11}")
    rows = [(f"MLP {n} layers", r) for n, r in result["mlp"].items()]
    rows += [("ResNet-18 1x3x224x224", result["resnet18"]), ("quick start CNN", result["quickstart_cnn"])]
    for name, r in rows:
        print(
            f"{name:<24} {r['build_s'] * 1e3:>9.1f}ms {r['compile_s'] * 1e3:>9.1f}ms "
            f"{r['first_call_s'] * 1e3:>9.1f}ms {r['second_call_s'] * 1e3:>9.1f}ms "
            f"{r['first_grad_call_s'] * 1e3:>9.1f}ms"
        )


def main() -> None:
    """Command line: one backend, table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=sorted(ml.available_backends()))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.backend == "torch":
        import torch

        torch.set_num_threads(1)
    result = run(args.backend)
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)


if __name__ == "__main__":
    main()
