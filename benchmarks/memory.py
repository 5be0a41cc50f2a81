"""Peak memory of one forward+backward step of the quick start CNN, batch 128: Mithril NumPy against torch.

Every measurement runs in a fresh subprocess and uses the same method for every framework: after
the parameters, the input and one warm-up step exist, the kernel's peak-RSS mark is reset
(`/proc/self/clear_refs`), one more step runs, and the peak RSS above the RSS before that step is
the step's peak working memory. glibc's malloc is told to serve every allocation over 64 KiB
with mmap (MALLOC_MMAP_THRESHOLD_), so freed arrays go back to the kernel in all frameworks alike
and RSS follows live memory. The NumPy step's tracemalloc peak is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

BATCH = 128
RUNS = 3
SUBJECTS = {
    "numpy": "Mithril, NumPy backend",
    "torch": "hand-written torch (nn.Sequential, autograd)",
    "mithril-torch": "Mithril, PyTorch backend",
}
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _step(subject: str) -> Callable[[], Any]:
    """A closure running one training-mode forward+backward step of the quick start CNN on `subject`."""
    shape = [BATCH, 3, 32, 32]
    if subject == "torch":
        import torch

        from mithril.testing.torch_parity import torch_quickstart_cnn

        torch.set_num_threads(1)
        net = torch_quickstart_cnn(torch.nn).train()
        weights = list(net.parameters())
        x, g = torch.randn(*shape), torch.ones(BATCH, 10)

        def torch_step() -> Any:
            out = net(x)
            return out.detach(), torch.autograd.grad((out,), weights, (g,))

        return torch_step
    import mithril as ml
    from mithril.testing.models import quickstart_cnn

    if subject == "mithril-torch":
        import torch

        torch.set_num_threads(1)
    backend = ml.NumpyBackend(dtype=ml.float32) if subject == "numpy" else ml.TorchBackend(dtype=ml.float32)
    compiled = ml.compile(quickstart_cnn(), backend, shapes={"input": shape})
    params = compiled.randomize_params(seed=0)
    inputs, grads = {"input": backend.randn(*shape)}, {"output": backend.ones(BATCH, 10)}
    return lambda: compiled.evaluate(params, inputs, grads)


def measure(subject: str) -> dict[str, float]:
    """Peak RSS above the starting RSS of one warm step in this process (and tracemalloc's peak for NumPy)."""
    step = _step(subject)
    step()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM reset"
    except OSError:
        method = "VmHWM since start (clear_refs unavailable)"
    before = _status("VmRSS")
    result = step()
    peak = _status("VmHWM")
    del result
    out = {"peak_delta_bytes": float(peak - before), "rss_before_bytes": float(before), "method": method}
    if subject == "numpy":
        tracemalloc.start()
        step()
        out["tracemalloc_peak_bytes"] = float(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return out


def run() -> dict[str, Any]:
    """Median of RUNS fresh subprocesses per subject, the subjects interleaved."""
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in SUBJECTS}
    env = {**os.environ, **ENV}
    for _ in range(RUNS):
        for subject in SUBJECTS:
            text = subprocess.check_output([sys.executable, __file__, "--subject", subject], text=True, env=env)
            samples[subject].append(json.loads(text.splitlines()[-1]))
    result: dict[str, Any] = {"batch": BATCH, "runs": RUNS, "method": samples["numpy"][0]["method"], "subjects": {}}
    for subject, runs in samples.items():
        summary = {
            "label": SUBJECTS[subject],
            "peak_delta_bytes": statistics.median(r["peak_delta_bytes"] for r in runs),
            "rss_before_bytes": statistics.median(r["rss_before_bytes"] for r in runs),
        }
        if subject == "numpy":
            summary["tracemalloc_peak_bytes"] = statistics.median(r["tracemalloc_peak_bytes"] for r in runs)
        result["subjects"][subject] = summary
    subjects = result["subjects"]
    result["ratio_numpy_to_torch"] = subjects["numpy"]["peak_delta_bytes"] / subjects["torch"]["peak_delta_bytes"]
    return result


def main() -> None:
    """Command line: the whole comparison (table or --json), or one --subject measurement (JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", choices=sorted(SUBJECTS), help="measure one subject in this process")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.subject:
        print(json.dumps(measure(args.subject)))
        return
    result = run()
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"\nPeak memory of one forward+backward step, quick start CNN, batch {BATCH} "
        f"(median of {RUNS} processes; {result['method']})"
    )
    for subject in result["subjects"].values():
        print(f"{subject['label']:<48} {subject['peak_delta_bytes'] / 2**20:>8.1f} MiB")
    print(
        f"NumPy / torch: {result['ratio_numpy_to_torch']:.2f}; NumPy tracemalloc peak "
        f"{result['subjects']['numpy']['tracemalloc_peak_bytes'] / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
