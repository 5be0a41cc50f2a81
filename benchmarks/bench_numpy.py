"""Per-call cost of compiled models on the NumPy backend against hand-written NumPy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402


def import_time() -> float:
    """Seconds for `import mithril` in a fresh interpreter (median of 5)."""
    code = "import time; t=time.perf_counter(); import mithril; print(time.perf_counter()-t)"
    runs = sorted(float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(5))
    return runs[2]


def mlp_rows() -> list[tuple[str, float, float, float, float | None]]:
    import numpy as np

    import mithril as ml
    from mithril.testing.models import quickstart_mlp

    model = quickstart_mlp()
    backend = ml.NumpyBackend(dtype=ml.float32)
    compiled = ml.compile(model, backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 20)
    g = backend.ones(32, 10)
    inputs, grads = {"input": x}, {"output": g}
    w1, b1 = params["linear_0.weight"], params["linear_0.bias"]
    w2, b2 = params["linear_1.weight"], params["linear_1.bias"]

    def hand_forward() -> dict[str, np.ndarray]:
        return {"output": np.maximum(x @ w1.T + b1, 0) @ w2.T + b2}

    def hand_backward() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        h = np.maximum(x @ w1.T + b1, 0)
        out = h @ w2.T + b2
        dh = (g @ w2) * (h > 0)
        return {"output": out}, {
            "linear_0.weight": dh.T @ x,
            "linear_0.bias": dh.sum(0),
            "linear_1.weight": g.T @ h,
            "linear_1.bias": g.sum(0),
        }

    fwd = compare(lambda: compiled.evaluate(params, inputs), hand_forward)
    bwd = compare(lambda: compiled.evaluate(params, inputs, grads), hand_backward)
    return [
        ("MLP 20-64-10, batch 32: forward", *fwd, 1.10),
        ("MLP 20-64-10, batch 32: forward+backward", *bwd, 1.10),
    ]


def cnn_rows() -> list[tuple[str, float, float, float, float | None]]:
    import hand_numpy_cnn as hand
    import numpy as np

    import mithril as ml
    from mithril.testing.models import quickstart_cnn

    backend = ml.NumpyBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [32, 3, 32, 32]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 3, 32, 32)
    g = backend.randn(32, 10)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g})
    ref_out, ref_grads = hand.forward_backward(params, x, g)
    np.testing.assert_allclose(out["output"], ref_out, rtol=1e-3, atol=1e-4)
    for key, value in ref_grads.items():
        if key.startswith("conv2d") and key.endswith("bias"):
            continue  # zero analytically (BatchNorm follows): both sides are rounding noise
        np.testing.assert_allclose(grads[key], value, rtol=1e-2, atol=1e-3 * float(np.abs(value).max()))
    fwd = compare(lambda: compiled.evaluate(params, {"input": x}), lambda: hand.forward(params, x), min_time=0.3)
    bwd = compare(
        lambda: compiled.evaluate(params, {"input": x}, {"output": g}),
        lambda: hand.forward_backward(params, x, g),
        min_time=0.3,
    )
    return [
        ("CNN batch 32x3x32x32: forward (train mode)", *fwd, 1.3),
        ("CNN batch 32x3x32x32: forward+backward", *bwd, 1.3),
    ]


def cnn1d_rows() -> list[tuple[str, float, float, float, float | None]]:
    """quickstart_cnn1d (Conv1d k=5, BatchNorm1d, ReLU, MaxPool1d, Linear) at batch 32, 4x64, training mode."""
    import hand_numpy_cnn1d as hand
    import numpy as np

    import mithril as ml
    from mithril.testing.models import quickstart_cnn1d

    backend = ml.NumpyBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn1d(), backend, shapes={"input": [32, 4, 64]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 4, 64)
    g = backend.randn(32, 10)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g})
    ref_out, ref_grads = hand.forward_backward(params, x, g)
    np.testing.assert_allclose(out["output"], ref_out, rtol=1e-3, atol=1e-4)
    for key, value in ref_grads.items():
        if key == "conv1d_0.bias":
            continue  # zero analytically (BatchNorm follows): both sides are rounding noise
        np.testing.assert_allclose(grads[key], value, rtol=1e-2, atol=1e-3 * float(np.abs(value).max()))
    fwd = compare(lambda: compiled.evaluate(params, {"input": x}), lambda: hand.forward(params, x))
    bwd = compare(
        lambda: compiled.evaluate(params, {"input": x}, {"output": g}), lambda: hand.forward_backward(params, x, g)
    )
    return [
        ("1-D CNN batch 32x4x64: forward (train mode)", *fwd, 1.3),
        ("1-D CNN batch 32x4x64: forward+backward", *bwd, 1.3),
    ]


def main() -> None:
    t0 = time.perf_counter()
    import mithril as ml

    print(f"import mithril: {import_time() * 1e3:.1f} ms (fresh interpreter, median of 5)")
    t1 = time.perf_counter()
    ml.NumpyBackend()
    print(f"first ml.NumpyBackend(): {(time.perf_counter() - t1) * 1e3:.1f} ms")
    print_table("NumPy backend vs hand-written NumPy (float32, single process)", mlp_rows() + cnn_rows() + cnn1d_rows())
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
