"""Two processes on 127.0.0.1: torchrun with gloo, and two JAX processes with 4 CPU devices each (a mesh of 8).

Each job runs once per module (workers.py holds the checks); every rank reports its own results.
A job is bounded in time and runs in its own process group, killed whole on failure or timeout,
so a failing rank cannot leave the other hanging.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
WORKERS = str(HERE / "workers.py")
LIMIT_S = 150
COLLECTIVE_TIMEOUT_S = "5"  # torch's process-group timeout in the job: the timeout case waits this long
JAX_ENV = {
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
    "TIMEOUT_S": COLLECTIVE_TIMEOUT_S,  # JaxBackend(collective_timeout=...) in the timeout case
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_jobs(commands: list[list[str]], env: dict[str, str]) -> list[tuple[int, str]]:
    """Run `commands` at once, each in its own process group: (exit status, output) of each, in order.

    Fails the test past LIMIT_S; whatever is still running then is killed with its whole group."""
    procs = [
        subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for command in commands
    ]
    finished = []
    try:
        for proc in procs:
            output = proc.communicate(timeout=LIMIT_S)[0]
            finished.append((proc.returncode, output))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job ran past {LIMIT_S} s: {commands}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return finished


def launch(commands: list[list[str]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Run `commands` at once (run_jobs); the RESULT lines they print, by rank."""
    text = "\n".join(output for _, output in run_jobs(commands, env))
    results = [json.loads(line[len("RESULT ") :]) for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2, f"expected a RESULT line from each of 2 ranks:\n{text[-6000:]}"
    return sorted(results, key=lambda r: r["rank"])


@pytest.fixture(scope="module")
def torch_ranks() -> list[dict[str, Any]]:
    pytest.importorskip("torch")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", WORKERS, "torch"]  # fmt: skip
    return launch([command], {"TIMEOUT_S": COLLECTIVE_TIMEOUT_S, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def jax_ranks() -> list[dict[str, Any]]:
    pytest.importorskip("jax")
    port = str(free_port())
    return launch([[sys.executable, WORKERS, "jax", str(i), port] for i in range(2)], JAX_ENV)


FRAMEWORKS = ["torch_ranks", "jax_ranks"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", ["data parallel", "tensor parallel"])
def test_forward_gradients_and_five_trainer_steps_equal_one_process(
    framework: str, case: str, request: pytest.FixtureRequest
) -> None:
    for rank in request.getfixturevalue(framework):
        assert rank[case] == "ok", f"rank {rank['rank']}: {rank[case]}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bad_input_raises_on_every_rank_naming_the_mesh_and_key(framework: str, request: pytest.FixtureRequest) -> None:
    for rank in request.getfixturevalue(framework):
        errors = rank["errors"]
        assert "device_mesh" in errors["mesh size"] and "has 3 devices" in errors["mesh size"], errors["mesh size"]
        assert "'input' has size 7" in errors["batch"] and "mesh {'data':" in errors["batch"], errors["batch"]
        assert "unknown mesh axis 'tensor'" in errors["axis"] and "'linear_0.weight'" in errors["axis"], errors["axis"]
        tensor_parallel = errors["tensor parallel"]
        assert "ShapeError" in tensor_parallel and "'linear_1.bias' has size 5" in tensor_parallel, tensor_parallel
        assert "mesh axis 'model'" in tensor_parallel, tensor_parallel


def test_dropout_on_a_jax_mesh_across_processes_draws_the_mask_of_one_process(jax_ranks: list[dict[str, Any]]) -> None:
    for rank in jax_ranks:
        assert rank["dropout"] == "ok", f"rank {rank['rank']}: {rank['dropout']}"


def test_a_collective_that_times_out_raises_naming_the_mesh(torch_ranks: list[dict[str, Any]]) -> None:
    waiting = torch_ranks[0]["timeout"]
    assert waiting.startswith("CollectiveError: Model on mesh {'data': 2}"), waiting
    assert "Timed out" in waiting or "timed out" in waiting, waiting
    assert torch_ranks[1]["timeout"] == "skipped the step"


def test_a_jax_collective_past_collective_timeout_raises_naming_the_mesh(jax_ranks: list[dict[str, Any]]) -> None:
    waiting = jax_ranks[0]["timeout"]
    assert waiting.startswith("CollectiveError: Model on mesh {'data': 8}"), waiting
    assert f"collective_timeout of {COLLECTIVE_TIMEOUT_S} s" in waiting, waiting
    assert waiting.endswith(f"(after {COLLECTIVE_TIMEOUT_S} s)"), waiting  # raised at the timeout, not later
    assert jax_ranks[1]["timeout"] == "skipped the step"


def test_a_jax_process_that_dies_stops_the_other_instead_of_leaving_it_waiting() -> None:
    """JAX has no collective timeout to raise from: its coordination service stops the survivor once the dead
    process's heartbeats are missing (5 s here), with a message saying so, well within the job's time limit."""
    pytest.importorskip("jax")
    port = str(free_port())
    commands = [[sys.executable, WORKERS, "jax-dead-peer", str(i), port] for i in range(2)]
    (survivor, waited), (dead, died) = run_jobs(commands, {**JAX_ENV, "HEARTBEAT_S": "5"})
    assert "STEPPED 1" in died and dead == 3, died[-3000:]
    assert "STEPPED 0" in waited and "SECOND STEP FINISHED" not in waited, waited[-3000:]
    assert survivor != 0 and "stopped sending heartbeats" in waited, (survivor, waited[-3000:])
