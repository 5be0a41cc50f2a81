"""Run every benchmark, each backend in its own subprocess, and write docs/benchmarks.md with two figures.

`python benchmarks/report.py` (or `nox -s bench`) measures import time, per-call cost against
hand-written code (the bench_*.py row functions) and against Keras 3, compile-time scaling,
and peak memory, then writes the report. Backends, Keras and matplotlib that are not
installed are skipped and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DOCS = ROOT / "docs"
BACKENDS = ("numpy", "torch", "jax", "ggml")
KERAS_BACKENDS = ("numpy", "torch", "jax")
IMPORT_RUNS = 7
IMPORT_TARGET_S = 0.5
CASES = ("MLP forward", "MLP forward+backward", "CNN forward", "CNN forward+backward")
TABLE_ROW = re.compile(r"^(.+?)\s+(\d+(?:\.\d+)?)us\s+(\d+(?:\.\d+)?)us\s+(\d+(?:\.\d+)?)\s*(\d+(?:\.\d+)?)?")
Row = list[Any]  # [case, mithril s, reference s, ratio, target or None]
WHY = {
    "compile-torch": "Half of mithril-torch's ml.compile is CPython compiling the generated source (two functions "
    "of about 7 lines per layer), which grows a little faster than linearly for one very long function; the rest "
    "is the same garbage-collector step as in the construction rows. The per-node liveness scan is linear "
    "(codegen.free_after_last_use).",
    "compile": "Python's cyclic garbage collector: the process holds hundreds of thousands of objects (the "
    "framework's own, the models of earlier repeats), and the first full collection, which a 1000-layer "
    "compile triggers and a 100-layer one does not, traverses all of them. With `gc` disabled the ratio is "
    "about 12-13x.",
    "construct": "Python's cyclic garbage collector, not the solver: a full collection runs about once per "
    "quarter of the live heap allocated, and traverses every live object, including the frameworks' own. At 100 "
    "layers none runs; at 1000 the first one does, so the ratio jumps. Beyond that the cost per layer is flat "
    "(measured with torch and jax imported: 158, 111 and 132 us per layer at 1000, 2000 and 4000 layers), i.e. "
    "construction grows linearly; with `gc` disabled 100 -> 1000 layers is 9.5x. A library must not disable or "
    "freeze the user's collector, so this stays.",
    "keras-numpy-cnn": "Keras's NumPy backend computes convolutions with jax.lax.conv_general_dilated and pooling "
    "with jax.lax.reduce_window (keras/src/backend/numpy/nn.py), i.e. with XLA, not NumPy: this row compares "
    "Mithril's NumPy convolution (im2col + BLAS) with XLA's compiled kernels.",
    "jax-cnn-forward": "Both sides are single XLA programs, so the difference is in the program mithril-jax emits "
    "for the training-mode CNN forward, not per-call overhead; the MLP rows, where dispatch dominates, are at par.",
    "jax-mlp": "Both sides are one jitted XLA call of 25-75 us, so a few microseconds decide the row. Mithril keeps "
    "torch.nn's [out, in] weight layout, and `x @ W.T` costs XLA's CPU program transposes in the backward pass: "
    "hand-written jax with that layout measured about 7 % slower here than with Keras's [in, out] kernels.",
    "torch-mlp": "The hand-written side builds its leaf tensors once, outside the timed call; mithril-torch's "
    "`forward_backward` must make each caller-owned parameter a fresh leaf (`detach().requires_grad_()`, four "
    "per call) and checks shapes, dtypes and devices: a few microseconds on a ~90 us call.",
    "ggml": "At 20-64-10 the arithmetic is about a microsecond; ggml's fixed cost per graph compute (about "
    "1.1 us) and its small-matrix kernels are most of the row, the Python around them about 1.6 us.",
}


def _run_json(args: list[str], env: dict[str, str] | None = None, timeout: float = 1200) -> dict[str, Any]:
    """Run `python args` and parse the last stdout line as JSON; {"error": ...} when it fails."""
    try:
        proc = subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {proc.returncode}"}
    return json.loads(lines[-1])


def machine() -> dict[str, str]:
    """CPU model, cores, Python and framework versions of this machine."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    info = {
        "CPU": cpu,
        "cores available": str(cores),
        "load average at start (1, 5, 15 min)": load,
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }
    for label, distribution in (
        ("numpy", "numpy"),
        ("torch", "torch"),
        ("jax", "jax"),
        ("keras", "keras"),
        ("ggml-python", "ggml-python"),
        ("matplotlib", "matplotlib"),
    ):
        try:
            info[label] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            info[label] = "not installed"
    return info


def import_times() -> dict[str, float]:
    """Median seconds of `import mithril` and of the first ml.NumpyBackend() in fresh interpreters."""
    code = (
        "import time; t = time.perf_counter(); import mithril as ml; t1 = time.perf_counter(); "
        "ml.NumpyBackend(); t2 = time.perf_counter(); print(t1 - t, t2 - t1)"
    )
    runs = [subprocess.check_output([sys.executable, "-c", code], text=True).split() for _ in range(IMPORT_RUNS)]
    return {
        "import_s": statistics.median(float(r[0]) for r in runs),
        "first_backend_s": statistics.median(float(r[1]) for r in runs),
        "runs": IMPORT_RUNS,
    }


def _parse_table(text: str) -> list[Row]:
    """Rows of the fixed-width tables that common.print_table printed."""
    rows = []
    for line in text.splitlines():
        match = TABLE_ROW.match(line)
        if match and not line.startswith("case"):
            case, c, r, ratio, target = match.groups()
            rows.append(
                [
                    case.strip(),
                    float(c) * 1e-6,
                    float(r) * 1e-6,
                    float(ratio),
                    None if target is None else float(target),
                ]
            )
    return rows


def hand_rows(backend: str) -> list[Row]:
    """Per-call rows of benchmarks/bench_<backend>.py: its row functions, or its main()'s printed tables."""
    sys.path.insert(0, str(BENCH))
    module = importlib.import_module(f"bench_{backend}")
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    if backend == "ggml":
        return [list(row) for row in module.small_rows() + module.memory_bound_rows(1)]
    if hasattr(module, "mlp_rows") and hasattr(module, "cnn_rows"):
        return [list(row) for row in module.mlp_rows() + module.cnn_rows()]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main()
    return _parse_table(out.getvalue())


def _case(case: str) -> str:
    """The CASES entry a row belongs to."""
    model = "CNN" if "CNN" in case else "MLP"
    return f"{model} {'forward+backward' if 'backward' in case else 'forward'}"


def collect(backends: list[str]) -> dict[str, Any]:
    """Every measurement, each backend (and each Keras backend) in its own subprocess."""
    results: dict[str, Any] = {"machine": machine(), "backends": backends}
    print("import time ...", flush=True)
    results["import"] = import_times()
    results["hand"], results["keras"], results["compile"] = {}, {}, {}
    for backend in backends:
        print(f"{backend}: per-call vs hand-written ...", flush=True)
        results["hand"][backend] = _run_json([str(BENCH / "report.py"), "--worker", backend])
        if backend in KERAS_BACKENDS:
            print(f"{backend}: per-call vs Keras ...", flush=True)
            results["keras"][backend] = _run_json(
                [str(BENCH / "keras_models.py"), "--backend", backend, "--json"], env={"KERAS_BACKEND": backend}
            )
        print(f"{backend}: compile scaling ...", flush=True)
        results["compile"][backend] = _run_json([str(BENCH / "compile_scaling.py"), "--backend", backend, "--json"])
    print("memory ...", flush=True)
    results["memory"] = (
        _run_json([str(BENCH / "memory.py"), "--json"])
        if "torch" in backends
        else {"error": "the torch backend is not installed"}
    )
    return results


def _us(seconds: float | None) -> str:
    """Microseconds or milliseconds, readable."""
    if seconds is None:
        return "–"
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _ms(seconds: float) -> str:
    """Milliseconds with sensible precision."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _verdict(value: float, target: float) -> str:
    """'met' or 'missed by N %' for a value that must stay at or under target."""
    return "met" if value <= target else f"**missed** by {(value / target - 1) * 100:.0f} %"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(target, backend, measured, verdict, why) for every target the issue sets."""
    out = []
    imp = results["import"]["import_s"]
    out.append((f"`import mithril` < {IMPORT_TARGET_S} s", "–", _ms(imp), _verdict(imp, IMPORT_TARGET_S), ""))
    for backend, comp in results["compile"].items():
        if "error" in comp:
            continue
        mlp = {int(k): v for k, v in comp["mlp"].items()}
        ratio = mlp[1000]["compile_s"] / mlp[100]["compile_s"]
        why = WHY.get(f"compile-{backend}", WHY["compile"]) if ratio > 12 else ""
        out.append(("ml.compile t(1000)/t(100) ≤ 12", backend, f"{ratio:.1f}", _verdict(ratio, 12), why))
        ratio = mlp[1000]["build_s"] / mlp[100]["build_s"]
        out.append(
            (
                "construction t(1000)/t(100) ≤ 12",
                backend,
                f"{ratio:.1f}",
                _verdict(ratio, 12),
                WHY["construct"] if ratio > 12 else "",
            )
        )
        total = mlp[1000]["build_s"] + mlp[1000]["compile_s"]
        out.append(("1000-layer MLP: construction + ml.compile < 2 s", backend, _ms(total), _verdict(total, 2.0), ""))
        if backend == "numpy":
            cnn = comp["quickstart_cnn"]["compile_s"]
            out.append(("quick start CNN ml.compile < 10 ms", backend, _ms(cnn), _verdict(cnn, 0.010), ""))
    for source, label in (("hand", "hand-written"), ("keras", "Keras 3")):
        for backend, res in results[source].items():
            for case, _, _, ratio, target in res.get("rows", []):
                if target is None:
                    continue
                why = ""
                if ratio > target:
                    key = _case(case)
                    why = {
                        ("keras", "numpy", "CNN forward"): WHY["keras-numpy-cnn"],
                        ("hand", "jax", "CNN forward"): WHY["jax-cnn-forward"],
                        ("keras", "jax", "CNN forward"): WHY["jax-cnn-forward"],
                    }.get((source, backend, key), "")
                    if backend == "jax" and key.startswith("MLP"):
                        why = WHY["jax-mlp"]
                    if backend == "torch" and key == "MLP forward+backward":
                        why = WHY["torch-mlp"]
                    if backend == "ggml":
                        why = WHY["ggml"]
                reference = "Mithril NumPy" if backend == "ggml" else label
                claim = f"{case}: ratio" if " vs " in case else f"{case}: Mithril / {reference}"
                out.append((f"{claim} ≤ {target:.2f}", backend, f"{ratio:.3f}", _verdict(ratio, target), why))
    return out


def _per_call_table(rows: list[Row], reference: str) -> list[str]:
    """Markdown lines for one per-call table."""
    lines = [f"| case | Mithril | {reference} | ratio | target |", "|---|---:|---:|---:|---:|"]
    for case, c, r, ratio, target in rows:
        mark = "" if target is None else (" ✓" if ratio <= target else " ✗")
        tgt = "–" if target is None else f"{target:.2f}"
        lines.append(f"| {case} | {_us(c)} | {_us(r)} | {ratio:.3f}{mark} | {tgt} |")
    return lines


def _accuracy_table(rows: list[list[Any]]) -> list[str]:
    """Markdown lines for GGML's quantization error table (bench_ggml.accuracy_rows)."""
    lines = [
        "Quantized weights against float32, relative output error on held-out inputs over 5 seeds of "
        'the quick start models; "calibrated" first runs `mithril_ggml.calibrate` on 512 other samples '
        "(GPTQ).",
        "",
        "| case | mean | max | target |",
        "|---|---:|---:|---:|",
    ]
    for case, mean, worst, target in rows:
        mark = "" if target is None else (" ✓" if worst < target else " ✗")
        lines.append(f"| {case} | {mean:.4f} | {worst:.4f}{mark} | {'–' if target is None else target} |")
    return [*lines, ""]


def markdown(results: dict[str, Any], elapsed: float, figures: list[str]) -> str:
    """The whole of docs/benchmarks.md."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/report.py` in one run of "
        f"{elapsed / 60:.1f} minutes on {time.strftime('%Y-%m-%d')}; every number below comes from that run.",
        "Per-call ratios are medians of interleaved rounds (`benchmarks/common.py`: `compare`), so drift on a "
        "shared machine hits both sides alike; ratio = Mithril's time / the reference's time, below 1 means "
        "Mithril is faster. Each backend, and each Keras backend, runs in its own process. The machine is shared: "
        "a load average above its core count (below) means other processes competed with this run, and single "
        "rows can then be off by tens of percent; rerun before reading much into one row.",
        "",
        "## How to rerun",
        "",
        "```bash",
        "nox -s bench                      # every bench_*.py, then this report (see noxfile.py)",
        "python benchmarks/report.py       # this report only, with whatever backends are installed",
        "python benchmarks/compile_scaling.py --backend torch   # one part, one backend, as a table",
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in m.items()),
        "",
        "## Targets",
        "",
        "| target | backend | measured | verdict |",
        "|---|---|---:|---|",
    ]
    notes: list[str] = []
    for target, backend, measured, verdict, why in targets(results):
        if why:
            if why not in notes:
                notes.append(why)
            verdict += f" [{notes.index(why) + 1}]"
        lines.append(f"| {target} | {backend} | {measured} | {verdict} |")
    if notes:
        lines += ["", "Why the misses happen:", ""] + [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    imp = results["import"]
    lines += [
        "",
        "## Import time",
        "",
        f"Fresh interpreters, median of {imp['runs']}: `import mithril` {_ms(imp['import_s'])}; "
        f"the first `ml.NumpyBackend()` (loads the NumPy plugin) {_ms(imp['first_backend_s'])}.",
        "",
        "## Per-call cost against hand-written code",
        "",
        "The quick start MLP (20-64-10, batch 32) and CNN (batch 32, 3x32x32, training mode) against the same "
        "network written by hand in the backend's framework (rows from `benchmarks/bench_<backend>.py`; torch "
        "single-threaded; the GGML rows compare with Mithril's NumPy backend, or as the case says: first vs "
        "second).",
        "",
    ]
    for backend, res in results["hand"].items():
        lines.append(f"### {backend}")
        lines.append("")
        if "error" in res:
            lines += [f"Skipped: {res['error']}", ""]
            continue
        reference = "reference" if backend == "ggml" else f"hand-written {backend}"
        lines += [*_per_call_table(res["rows"], reference), ""]
        if "accuracy" in res:
            lines += _accuracy_table(res["accuracy"])
    lines += [
        "## Per-call cost against Keras 3",
        "",
        "The same two networks in Keras 3 on the same framework, `KERAS_BACKEND` set per process: torch "
        "calls `model(x)` (under `no_grad` for forward) and `torch.autograd.grad`; jax jits "
        "`model.stateless_call` and `jax.vjp`; numpy calls `model(x)` (Keras's NumPy backend has no "
        "gradients, so forward only). Keras target: Mithril faster on every row.",
        "",
    ]
    for backend, res in results["keras"].items():
        lines.append(f"### {backend}")
        lines.append("")
        if "skipped" in res or "error" in res:
            lines += [f"Skipped: {res.get('skipped') or res['error']}.", ""]
            continue
        lines += [f"Keras {res['keras']}.", "", *_per_call_table(res["rows"], "Keras 3"), ""]
    if "per_call.png" in figures:
        lines += [
            "![Per-call cost by backend](img/per_call.png)",
            "",
            "Mithril's bars come from the hand-written comparison's process; Keras's from its own.",
            "",
        ]
    lines += _compile_section(results, figures)
    lines += _memory_section(results["memory"])
    if not figures:
        lines += ["", "Figures skipped: matplotlib is not installed."]
    return "\n".join(lines) + "\n"


def _compile_section(results: dict[str, Any], figures: list[str]) -> list[str]:
    """Markdown lines of the compile-time tables."""
    lines = [
        "## Compile time",
        "",
        "Construction is the logical model's `|=`/`+=` composition with incremental shape solving; "
        "`ml.compile` flattens, completes shapes and lowers (for JAX with jit: builds the program). The first "
        "call includes JAX's trace and XLA compilation and GGML's graph build. MLPs are N x (Linear(32) + Relu), "
        "batch 16; ResNet-18 (`benchmarks/resnet.py`, 11.7 M parameters) at 1x3x224x224. Medians of 7 fresh "
        "models (3 for N = 1000 and ResNet-18, 15 for the quick start CNN); the first call once.",
        "",
        "| backend | model | construction | ml.compile | first call | second call |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for backend, comp in results["compile"].items():
        if "error" in comp:
            lines.append(f"| {backend} | skipped: {comp['error']} | | | | |")
            continue
        entries = [(f"MLP N = {n}", r) for n, r in comp["mlp"].items()]
        entries += [("ResNet-18", comp["resnet18"]), ("quick start CNN", comp["quickstart_cnn"])]
        for name, r in entries:
            lines.append(
                f"| {backend} | {name} | {_ms(r['build_s'])} | {_ms(r['compile_s'])} | "
                f"{_ms(r['first_call_s'])} | {_ms(r['second_call_s'])} |"
            )
    if "compile_scaling.png" in figures:
        lines += ["", "![Compile time against N](img/compile_scaling.png)"]
    return lines + [""]


def _memory_section(mem: dict[str, Any]) -> list[str]:
    """Markdown lines of the memory comparison."""
    lines = ["## Memory", ""]
    if "error" in mem:
        return lines + [f"Skipped: {mem['error']}."]
    lines += [
        f"One training-mode forward+backward step of the quick start CNN at batch {mem['batch']}: peak RSS "
        "above the RSS before the step, each in a fresh process after one warm-up step, median of "
        f"{mem['runs']} processes ({mem['method']}; glibc malloc set to return every block over 64 KiB to "
        "the kernel, the same for every subject; `benchmarks/memory.py`).",
        "",
        "| subject | peak above baseline |",
        "|---|---:|",
    ]
    for subject in mem["subjects"].values():
        lines.append(f"| {subject['label']} | {subject['peak_delta_bytes'] / 2**20:.1f} MiB |")
    numpy = mem["subjects"]["numpy"]
    lines += [
        "",
        f"NumPy backend / torch: **{mem['ratio_numpy_to_torch']:.2f}**. The NumPy step's tracemalloc peak, "
        f"an independent check, is {numpy['tracemalloc_peak_bytes'] / 2**20:.1f} MiB.",
    ]
    return lines


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """Write per_call.png and compile_scaling.png under `out`; the names written (none without matplotlib)."""
    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    backends = [b for b in KERAS_BACKENDS if "rows" in results["hand"].get(b, {})]
    if backends:
        fig, axes = plt.subplots(1, len(CASES), figsize=(14, 4))
        for ax, case in zip(axes, CASES):
            series: dict[str, list[float]] = {"Mithril": [], "hand-written": [], "Keras 3": []}
            for backend in backends:
                hand = {_case(r[0]): r for r in results["hand"][backend]["rows"]}
                keras = {_case(r[0]): r for r in results["keras"].get(backend, {}).get("rows", [])}
                series["Mithril"].append(hand[case][1] * 1e6 if case in hand else float("nan"))
                series["hand-written"].append(hand[case][2] * 1e6 if case in hand else float("nan"))
                series["Keras 3"].append(keras[case][2] * 1e6 if case in keras else float("nan"))
            for i, (label, values) in enumerate(series.items()):
                ax.bar([x + (i - 1) * 0.27 for x in range(len(backends))], values, 0.27, label=label)
            ax.set_xticks(range(len(backends)), backends)
            ax.set_yscale("log")
            ax.set_title(case)
            ax.set_ylabel("µs per call")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "per_call.png", dpi=100)
        plt.close(fig)
        written.append("per_call.png")
    fig, ax = plt.subplots(figsize=(7, 5))
    for backend, comp in results["compile"].items():
        if "error" in comp:
            continue
        ns = sorted(int(n) for n in comp["mlp"])
        mlp = {int(k): v for k, v in comp["mlp"].items()}
        line = ax.plot(ns, [mlp[n]["compile_s"] for n in ns], "o-", label=f"ml.compile, {backend}")[0]
        ax.plot(
            ns,
            [mlp[n]["build_s"] for n in ns],
            "s--",
            color=line.get_color(),
            alpha=0.6,
            label=f"construction ({backend} process)",
        )
        if backend == "jax":
            ax.plot(
                ns, [mlp[n]["first_call_s"] for n in ns], "^:", color=line.get_color(), label="first call, jax (XLA)"
            )
    ax.plot([10, 1000], [1e-3, 0.1], color="grey", linewidth=0.8, label="linear (slope 1)")
    ax.axhline(2.0, color="red", linewidth=0.8, label="2 s target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("layers N (Linear + Relu)")
    ax.set_ylabel("seconds")
    ax.set_title("Compile time against model size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compile_scaling.png", dpi=100)
    plt.close(fig)
    return [*written, "compile_scaling.png"]


def main() -> None:
    """Command line: the whole report, or (--worker BACKEND) one backend's hand-written rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=BACKENDS, help="print one backend's hand-written rows as JSON")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where benchmarks.md and img/ go")
    parser.add_argument("--json", type=Path, help="also save the raw measurements there")
    args = parser.parse_args()
    if args.worker:
        payload: dict[str, Any] = {"backend": args.worker, "rows": hand_rows(args.worker)}
        if args.worker == "ggml":
            payload["accuracy"] = [list(row) for row in importlib.import_module("bench_ggml").accuracy_rows()]
        print(json.dumps(payload))
        return
    import mithril as ml

    start = time.perf_counter()
    available = ml.available_backends()
    backends = [b for b in BACKENDS if b in available and available[b].error is None]
    results = collect(backends)
    for backend in BACKENDS:
        if backend not in backends:
            reason = "is not installed" if backend not in available else f"failed to load: {available[backend].error}"
            results["hand"][backend] = results["compile"][backend] = {"error": f"the {backend} backend {reason}"}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    results["machine"]["load average at end (1, 5, 15 min)"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    figures = plot(results, args.docs / "img")
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "benchmarks.md").write_text(markdown(results, time.perf_counter() - start, figures))
    print(f"wrote {args.docs / 'benchmarks.md'} and {len(figures)} figures in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
