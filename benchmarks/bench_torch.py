"""Per-call cost of the compiled quick start MLP on the PyTorch backend against hand-written torch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402

Row = tuple[str, float, float, float, float | None]


def mlp_rows() -> list[Row]:
    """Forward (no_grad) and forward+backward (torch.autograd.grad) of MLP 20-64-10, batch 32, float32."""
    import mithril as ml
    from mithril.models import Linear, Model, Relu

    model = Model()
    model |= Linear(dimension=64)
    model += Relu()
    model += Linear(dimension=10)
    backend = ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(model, backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 20)
    g = backend.ones(32, 10)
    inputs, grads = {"input": x}, {"output": g}
    keys = ["linear_0.weight", "linear_0.bias", "linear_1.weight", "linear_1.bias"]
    w1, b1, w2, b2 = (params[k] for k in keys)
    leaves = tuple(params[k].detach().clone().requires_grad_() for k in keys)
    lw1, lb1, lw2, lb2 = leaves

    def hand_forward() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"output": F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)}

    def hand_backward() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = F.linear(torch.relu(F.linear(x, lw1, lb1)), lw2, lb2)
        dw1, db1, dw2, db2 = torch.autograd.grad((out,), leaves, (g,), allow_unused=True)
        return {"output": out.detach()}, dict(zip(keys, (dw1, db1, dw2, db2)))

    fwd = compare(lambda: compiled.evaluate(params, inputs), hand_forward)
    bwd = compare(lambda: compiled.evaluate(params, inputs, grads), hand_backward)
    return [
        ("MLP 20-64-10, batch 32: forward (no_grad)", *fwd, 1.05),
        ("MLP 20-64-10, batch 32: forward+backward", *bwd, 1.05),
    ]


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_table("PyTorch backend vs hand-written torch (float32, cpu, single thread)", mlp_rows())
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
