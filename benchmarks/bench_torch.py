"""Per-call cost of the compiled quick start MLP, CNN and 1-D CNN on the PyTorch backend vs hand-written torch."""

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
    from mithril.testing.models import quickstart_mlp

    model = quickstart_mlp()
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


def cnn_rows() -> list[Row]:
    """The quick start CNN in training mode (batch statistics, running statistics updated), batch 32, 3x32x32."""
    import mithril as ml
    from mithril.testing.models import quickstart_cnn

    backend = ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": [32, 3, 32, 32]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 3, 32, 32)
    g = backend.ones(32, 10)
    inputs, grads = {"input": x}, {"output": g}
    keys = list(params)
    leaves = tuple(params[k].detach().clone().requires_grad_() for k in keys)
    stats = [backend.zeros(16), backend.ones(16), backend.zeros(32), backend.ones(32)]

    def network(p: tuple[torch.Tensor, ...]) -> torch.Tensor:
        cw1, cb1, bw1, bb1, cw2, cb2, bw2, bb2, lw1, lb1, lw2, lb2 = p
        h = F.conv2d(x, cw1, cb1, 1, 1)
        h = F.max_pool2d(torch.relu(F.batch_norm(h, stats[0], stats[1], bw1, bb1, True, 0.1, 1e-5)), 2)
        h = F.conv2d(h, cw2, cb2, 1, 1)
        h = F.max_pool2d(torch.relu(F.batch_norm(h, stats[2], stats[3], bw2, bb2, True, 0.1, 1e-5)), 2)
        return F.linear(torch.relu(F.linear(torch.flatten(h, 1), lw1, lb1)), lw2, lb2)

    values = tuple(params[k] for k in keys)

    def hand_forward() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"output": network(values)}

    def hand_backward() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = network(leaves)
        return {"output": out.detach()}, dict(zip(keys, torch.autograd.grad((out,), leaves, (g,), allow_unused=True)))

    fwd = compare(lambda: compiled.evaluate(params, inputs), hand_forward)
    bwd = compare(lambda: compiled.evaluate(params, inputs, grads), hand_backward)
    return [
        ("CNN 3x32x32, batch 32, train: forward", *fwd, 1.05),
        ("CNN 3x32x32, batch 32, train: forward+backward", *bwd, 1.05),
    ]


def cnn1d_rows() -> list[Row]:
    """quickstart_cnn1d in training mode (batch statistics, running statistics updated), batch 32, 4x64."""
    import mithril as ml
    from mithril.testing.models import quickstart_cnn1d

    backend = ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn1d(), backend, shapes={"input": [32, 4, 64]})
    params = compiled.randomize_params(seed=0)
    x = backend.randn(32, 4, 64)
    g = backend.ones(32, 10)
    inputs, grads = {"input": x}, {"output": g}
    keys = list(params)
    leaves = tuple(params[k].detach().clone().requires_grad_() for k in keys)
    stats = [backend.zeros(16), backend.ones(16)]

    def network(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        p = dict(zip(keys, values))
        h = F.conv1d(x, p["conv1d_0.weight"], p["conv1d_0.bias"], 1, 2)
        h = F.batch_norm(h, *stats, p["batchnorm1d_0.weight"], p["batchnorm1d_0.bias"], True, 0.1, 1e-5)
        h = F.max_pool1d(torch.relu(h), 2)
        return F.linear(torch.flatten(h, 1), p["linear_0.weight"], p["linear_0.bias"])

    values = tuple(params[k] for k in keys)

    def hand_forward() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"output": network(values)}

    def hand_backward() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = network(leaves)
        return {"output": out.detach()}, dict(zip(keys, torch.autograd.grad((out,), leaves, (g,), allow_unused=True)))

    torch.testing.assert_close(compiled.evaluate(params, inputs)["output"], hand_forward()["output"])
    fwd = compare(lambda: compiled.evaluate(params, inputs), hand_forward)
    bwd = compare(lambda: compiled.evaluate(params, inputs, grads), hand_backward)
    return [
        ("1-D CNN 4x64, batch 32, train: forward", *fwd, 1.05),
        ("1-D CNN 4x64, batch 32, train: forward+backward", *bwd, 1.05),
    ]


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_table(
        "PyTorch backend vs hand-written torch (float32, cpu, single thread)", mlp_rows() + cnn_rows() + cnn1d_rows()
    )
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
