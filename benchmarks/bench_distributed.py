"""Data parallel on torch.distributed (gloo, CPU): bytes all-reduced per training step against the
parameter bytes, and the step time of 2 processes against 1 on the same global batch.

    python benchmarks/bench_distributed.py [--steps 30] [--batch 256] [--hidden 512]

Launches itself under torchrun with 1 and then 2 processes on 127.0.0.1 and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any


def worker(steps: int, batch: int, hidden: int) -> dict[str, Any]:
    """One rank: an MLP trained with SGD on a data-parallel mesh of every process; its measurements."""
    import datetime

    import numpy as np
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    import mithril as ml
    from mithril.models import Linear, Model, MSELoss, Relu

    sent = [0, 0]  # bytes, calls of the gradient all-reduce
    original = dist.all_reduce

    def counting(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += tensor.numel() * tensor.element_size()
        sent[1] += 1
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]
    model = Model()
    model |= Linear(hidden)(input="input", output="h")
    model += Relu()(input="h", output="a")
    model += Linear(hidden)(input="a", output="h2")
    model += Relu()(input="h2", output="a2")
    model += Linear(10)(input="a2", output="output")
    backend = ml.TorchBackend(dtype=ml.float32, device_mesh=(dist.get_world_size(),))
    trainer = ml.Trainer(model, backend, MSELoss(), ml.optim.SGD(lr=0.01), shapes={"input": [batch, 256]})
    state = trainer.init(seed=0)
    rng = np.random.default_rng(0)
    data = {
        "input": rng.standard_normal((batch, 256), np.float32),
        "target": rng.standard_normal((batch, 10), np.float32),
    }
    placed = {k: backend.array(v) for k, v in data.items()}
    for _ in range(3):
        state, _ = trainer.step(state, placed)
    sent[:] = [0, 0]
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = trainer.step(state, placed)
    dist.barrier()
    elapsed = (time.perf_counter() - start) / steps
    params = sum(v.to_local().numel() * v.to_local().element_size() for v in state.params.values())
    return {
        "rank": dist.get_rank(), "processes": dist.get_world_size(), "step_ms": elapsed * 1e3,
        "allreduce_bytes_per_step": sent[0] / steps, "allreduce_calls_per_step": sent[1] / steps, "param_bytes": params,
    }  # fmt: skip


def launch(processes: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rank 0's measurements of a torchrun job with `processes` processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}", "--master-addr=127.0.0.1",
        f"--master-port={port}", __file__, "--worker", "--steps", str(args.steps), "--batch", str(args.batch),
        "--hidden", str(args.hidden),
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    results = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not results:
        raise RuntimeError(f"torchrun with {processes} processes failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return next(r for r in results if r["rank"] == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.steps, args.batch, args.hidden)), flush=True)
        return
    one, two = launch(1, args), launch(2, args)
    print(f"MLP 256-{args.hidden}-{args.hidden}-10, float32, global batch {args.batch}, SGD, gloo on CPU")
    print(f"parameter bytes: {one['param_bytes']:,}")
    for r in (one, two):
        ratio = r["allreduce_bytes_per_step"] / r["param_bytes"]
        print(
            f"{r['processes']} process(es): step {r['step_ms']:.2f} ms, gradient all-reduce "
            f"{r['allreduce_bytes_per_step']:,.0f} bytes in {r['allreduce_calls_per_step']:.0f} call(s) per step "
            f"({ratio:.2f}x the parameter bytes)"
        )
    print(f"2 processes vs 1: {two['step_ms'] / one['step_ms']:.2f}x the step time")


if __name__ == "__main__":
    main()
