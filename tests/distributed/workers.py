"""One rank of the distributed tests: `python workers.py torch` under torchrun, or `python workers.py jax ID PORT`
(`jax-dead-peer ID PORT`: a process that dies in the middle of training).

Each rank checks its own results against one process computing the whole batch and prints one
line `RESULT {json}`: per check, "ok" or the error. Checks that must raise record the message.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

TOL = 1e-10
BATCH, FEATURES, HIDDEN, OUT = 8, 6, 16, 5
# Megatron's pair: the first Linear split by output rows (column parallel), the second by input columns
TENSOR_PARALLEL = {"linear_0.weight": ("model", None), "linear_0.bias": ("model",), "linear_1.weight": (None, "model")}


def mlp() -> Any:
    """Linear(16), Relu, Linear(5): the tensor-parallel Linear pair around an activation."""
    from mithril.models import Linear, Model, Relu

    model = Model()
    model |= Linear(HIDDEN)(input="input", output="hidden")
    model += Relu()(input="hidden", output="act")
    model += Linear(OUT)(input="act", output="output")
    return model


def data() -> dict[str, np.ndarray]:
    """The same global batch, output gradient and parameters on every rank."""
    rng = np.random.default_rng(1)
    return {
        "input": rng.standard_normal((BATCH, FEATURES)),
        "target": rng.standard_normal((BATCH, OUT)),
        "grad": rng.standard_normal((BATCH, OUT)),
        "linear_0.weight": rng.standard_normal((HIDDEN, FEATURES)) * 0.3,
        "linear_0.bias": rng.standard_normal(HIDDEN) * 0.3,
        "linear_1.weight": rng.standard_normal((OUT, HIDDEN)) * 0.3,
        "linear_1.bias": rng.standard_normal(OUT) * 0.3,
    }


def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Raise an AssertionError naming `what` unless the arrays agree within TOL."""
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) if np.size(want) else 0.0
    if not err <= TOL:
        raise AssertionError(f"{what}: max difference {err:.3g} > {TOL}")


def parity(ml: Any, single: Any, meshed: Any, local_copies: Callable[[Any], list[np.ndarray]], **options: Any) -> None:
    """Forward, gradients and 5 Trainer steps on the mesh equal one process computing the whole batch."""
    from mithril.models import MSELoss

    d = data()
    keys = [k for k in d if k.startswith("linear")]
    model = mlp()
    model += MSELoss()(input="output", target="target", output="loss")
    shapes = {"input": [BATCH, FEATURES], "target": [BATCH, OUT]}
    ref = ml.compile(model, single, shapes=shapes, outputs=["loss", "output"])
    dist = ml.compile(model, meshed, shapes=shapes, outputs=["loss", "output"], **options)
    results = []
    for backend, compiled in ((single, ref), (meshed, dist)):
        params = {k: backend.array(d[k]) for k in keys}
        inputs = {"input": backend.array(d["input"]), "target": backend.array(d["target"])}
        grads_in = {"loss": backend.array(np.array(1.0)), "output": backend.array(d["grad"])}
        forward = compiled.evaluate(params, inputs)
        outputs, grads = compiled.evaluate(params, inputs, grads_in)
        results.append(
            {f"forward {k}": backend.to_numpy(v) for k, v in forward.items()}
            | {f"output {k}": backend.to_numpy(v) for k, v in outputs.items()}
            | {f"gradient {k}": backend.to_numpy(v) for k, v in grads.items()}
        )
    for key, want in results[0].items():
        close(results[1][key], want, key)
    trainers = [
        ml.Trainer(mlp(), b, MSELoss(), ml.optim.Adam(lr=0.01), shapes={"input": [BATCH, FEATURES]}, **o)
        for b, o in ((single, {}), (meshed, options))
    ]
    states = [t.init(params={k: d[k] for k in keys}) for t in trainers]
    for step in range(5):
        batch = {"input": d["input"] + step, "target": d["target"]}
        (s0, m0), (s1, m1) = trainers[0].step(states[0], batch), trainers[1].step(states[1], batch)
        states = [s0, s1]
        close(meshed.to_numpy(m1["loss"]), single.to_numpy(m0["loss"]), f"step {step + 1} loss")
        for key in keys:
            want = single.to_numpy(s0.params[key])
            close(meshed.to_numpy(s1.params[key]), want, f"step {step + 1} parameter {key}")
            for copy in local_copies(s1.params[key]):  # this rank's own copy of a replicated parameter
                close(copy, want, f"step {step + 1} this rank's copy of {key}")


def dropout_parity(ml: Any, single: Any, meshed: Any) -> None:
    """With one seed, Dropout draws the same mask on the mesh as in one process: forward, gradients, 3 steps."""
    from mithril.models import Dropout, Linear, Model, MSELoss

    model = Model()
    model |= Linear(HIDDEN)(input="input", output="hidden")
    model += Dropout(p=0.5)(input="hidden", output="dropped")
    model += Linear(OUT)(input="dropped", output="output")
    d = data()
    keys = [k for k in d if k.startswith("linear")]
    results = []
    for backend in (single, meshed):
        backend.set_seed(7)
        compiled = ml.compile(model, backend, shapes={"input": [BATCH, FEATURES]}, outputs=["output", "dropped"])
        params = {k: backend.array(d[k]) for k in keys}
        outputs, grads = compiled.evaluate(
            params, {"input": backend.array(d["input"])}, {"output": backend.array(d["grad"])}
        )
        trainer = ml.Trainer(model, backend, MSELoss(), ml.optim.SGD(lr=0.1), shapes={"input": [BATCH, FEATURES]})
        state = trainer.init(params={k: d[k] for k in keys})
        for _ in range(3):
            state, _ = trainer.step(state, {"input": d["input"], "target": d["target"]})
        results.append(
            {k: backend.to_numpy(v) for k, v in outputs.items()}
            | {f"gradient {k}": backend.to_numpy(v) for k, v in grads.items()}
            | {f"step 3 parameter {k}": backend.to_numpy(v) for k, v in state.params.items()}
        )
    if not 0.2 < np.mean(results[0]["dropped"] == 0) < 0.8:
        raise AssertionError("Dropout(p=0.5) should drop about half of the hidden values in one process")
    for key, want in results[0].items():
        close(results[1][key], want, key)


def raises(check: Callable[[], Any]) -> str:
    """The error `check` raises, as 'Type: message', or 'no error raised'."""
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any error is recorded for the test to read
        return f"{type(error).__name__}: {error}"
    return "no error raised"


def bad_input(ml: Any, parallel: Any, meshed: Any, make_backend: Callable[[Any], Any]) -> dict[str, str]:
    """The errors of a mesh that does not fit, an odd batch, an unknown axis, an indivisible dimension.

    `parallel` is a data-parallel backend, `meshed` one with a "model" axis.
    """
    model = ml.compile(mlp(), parallel, shapes={"input": [None, FEATURES]})
    params = {k: parallel.array(v) for k, v in data().items() if k.startswith("linear")}
    return {
        "mesh size": raises(lambda: make_backend((3,))),
        "batch": raises(lambda: model.evaluate(params, {"input": parallel.array(np.ones((BATCH - 1, FEATURES)))})),
        "axis": raises(
            lambda: ml.compile(
                mlp(), meshed, shapes={"input": [BATCH, FEATURES]}, shardings={"linear_0.weight": ("tensor", None)}
            )
        ),
        "tensor parallel": raises(
            lambda: ml.compile(
                mlp(), meshed, shapes={"input": [BATCH, FEATURES]}, shardings={"linear_1.bias": ("model",)}
            )
        ),
    }


def run_torch() -> dict[str, Any]:
    """The torch checks on this rank of a torchrun job (gloo on CPU)."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(os.environ.get("TIMEOUT_S", "20"))))
    import mithril as ml

    rank, world = tdist.get_rank(), tdist.get_world_size()
    single = ml.TorchBackend(dtype=ml.float64)

    def local_copies(array: Any) -> list[np.ndarray]:
        return [array.to_local().numpy()] if all(p.is_replicate() for p in array.placements) else []

    out: dict[str, Any] = {"rank": rank}
    parallel = ml.TorchBackend(dtype=ml.float64, device_mesh=(world,))
    for name, mesh, options in (
        ("data parallel", (world,), {}),
        ("tensor parallel", {"data": 1, "model": world}, {"shardings": TENSOR_PARALLEL}),
    ):
        out[name] = attempt(
            parity, ml, single, ml.TorchBackend(dtype=ml.float64, device_mesh=mesh), local_copies, **options
        )
    meshed = ml.TorchBackend(dtype=ml.float64, device_mesh={"data": 1, "model": world})
    out["errors"] = bad_input(ml, parallel, meshed, lambda mesh: ml.TorchBackend(dtype=ml.float64, device_mesh=mesh))
    out["timeout"] = timeout_case(ml, rank, world)
    return out


def timeout_case(ml: Any, rank: int, world: int) -> str:
    """Rank 1 skips a training step: rank 0's gradient all-reduce times out with an error naming the mesh."""
    from mithril.models import MSELoss

    backend = ml.TorchBackend(dtype=ml.float64, device_mesh=(world,))
    trainer = ml.Trainer(mlp(), backend, MSELoss(), ml.optim.SGD(lr=0.1), shapes={"input": [BATCH, FEATURES]})
    state = trainer.init(seed=0)
    d = data()
    if rank == 1:
        time.sleep(float(os.environ.get("TIMEOUT_S", "20")) + 3)
        return "skipped the step"
    return raises(lambda: trainer.step(state, {"input": d["input"], "target": d["target"]}))


def start_jax(process_id: int, port: str, **options: Any) -> Any:
    """jax, after joining the 2-process job on 127.0.0.1:`port` with gloo CPU collectives."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=30,
        **options,
    )
    return jax


def run_jax(process_id: int, port: str) -> dict[str, Any]:
    """The JAX checks on process `process_id` of 2, each with 4 CPU devices: a mesh of 8."""
    jax = start_jax(process_id, port)
    import mithril as ml

    single = ml.JaxBackend(dtype=ml.float64, device=f"cpu:{jax.devices().index(jax.local_devices()[0])}")

    def local_copies(array: Any) -> list[np.ndarray]:
        return [np.asarray(s.data) for s in array.addressable_shards] if array.sharding.is_fully_replicated else []

    out: dict[str, Any] = {"rank": process_id}
    for name, mesh, options in (
        ("data parallel", (8,), {}),
        ("tensor parallel", {"data": 2, "model": 4}, {"shardings": TENSOR_PARALLEL}),
    ):
        out[name] = attempt(
            parity, ml, single, ml.JaxBackend(dtype=ml.float64, device_mesh=mesh), local_copies, **options
        )
    meshed = ml.JaxBackend(dtype=ml.float64, device_mesh={"data": 2, "model": 4})
    parallel = ml.JaxBackend(dtype=ml.float64, device_mesh=(8,))
    out["dropout"] = attempt(dropout_parity, ml, single, parallel)
    out["errors"] = bad_input(ml, parallel, meshed, lambda mesh: ml.JaxBackend(dtype=ml.float64, device_mesh=mesh))
    out["timeout"] = jax_timeout_case(ml, process_id)  # last: it leaves a collective pending on process 0
    return out


def jax_timeout_case(ml: Any, process_id: int) -> str:
    """Process 1 skips a Trainer step: process 0's gradient all-reduce outlasts collective_timeout and raises
    a CollectiveError naming the mesh. Process 0 then outwaits process 1, which prints its result first."""
    from mithril.models import MSELoss

    seconds = float(os.environ.get("TIMEOUT_S", "20"))
    backend = ml.JaxBackend(dtype=ml.float64, device_mesh=(8,), collective_timeout=seconds)
    trainer = ml.Trainer(mlp(), backend, MSELoss(), ml.optim.SGD(lr=0.1), shapes={"input": [BATCH, FEATURES]})
    state = trainer.init(seed=0)
    d = data()
    if process_id == 1:
        time.sleep(seconds + 3)
        return "skipped the step"
    started = time.monotonic()
    error = raises(lambda: trainer.step(state, {"input": d["input"], "target": d["target"]}))
    waited = time.monotonic() - started
    time.sleep(6)
    return f"{error} (after {waited:.0f} s)"


def jax_dead_peer(process_id: int, port: str) -> None:
    """Both processes take a Trainer step on a mesh of 8; then process 1 exits and process 0 steps again.

    Its gradient all-reduce cannot complete: JAX's coordination service notices the missing heartbeats
    and stops process 0 (no Python error can be raised there), so it never hangs.
    """
    start_jax(process_id, port, heartbeat_timeout_seconds=int(os.environ.get("HEARTBEAT_S", "5")))
    import mithril as ml
    from mithril.models import MSELoss

    backend = ml.JaxBackend(dtype=ml.float64, device_mesh=(8,))
    trainer = ml.Trainer(mlp(), backend, MSELoss(), ml.optim.SGD(lr=0.1), shapes={"input": [BATCH, FEATURES]})
    d = data()
    state, _ = trainer.step(trainer.init(seed=0), {"input": d["input"], "target": d["target"]})
    print(f"STEPPED {process_id}", flush=True)
    if process_id == 1:
        os._exit(3)
    state, metrics = trainer.step(state, {"input": d["input"], "target": d["target"]})
    print(f"SECOND STEP FINISHED {float(metrics['loss'])}", flush=True)


def attempt(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """'ok', or the traceback of the failed `check(*args, **kwargs)`."""
    try:
        check(*args, **kwargs)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        return traceback.format_exc()
    return "ok"


if __name__ == "__main__":
    framework = sys.argv[1]
    if framework == "jax-dead-peer":
        jax_dead_peer(int(sys.argv[2]), sys.argv[3])
        os._exit(0)
    result = run_torch() if framework == "torch" else run_jax(int(sys.argv[2]), sys.argv[3])
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no teardown collectives: a rank that finished must not wait on the other
