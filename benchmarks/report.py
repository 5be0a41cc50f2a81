"""Run every benchmark, each backend in its own subprocess, and write docs/benchmarks.md with two figures.

`python benchmarks/report.py` (or `nox -s bench`) measures import time, per-call cost against
hand-written code (the bench_*.py row functions) and against Keras 3, compile-time scaling,
and peak memory, then writes the report. Backends, Keras and matplotlib that are not
installed are skipped and the report says so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
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
CASES = (
    "MLP forward",
    "MLP forward+backward",
    "CNN forward",
    "CNN forward+backward",
    "1-D CNN forward",
    "1-D CNN forward+backward",
)
ROW_FUNCTIONS: dict[str, list[tuple[str, tuple[Any, ...]]]] = {
    **{b: [("mlp_rows", ()), ("cnn_rows", ()), ("cnn1d_rows", ())] for b in ("numpy", "torch", "jax")},
    "ggml": [("small_rows", ()), ("cnn_rows", ()), ("memory_bound_rows", (1,))],
}
ROW_MODEL = {"mlp_rows": "MLP", "small_rows": "MLP", "cnn_rows": "CNN", "cnn1d_rows": "1-D CNN"}
PER_CALL_SECTIONS = {"Per-call cost against hand-written code": "hand", "Per-call cost against Keras 3": "keras"}
FROM_RUN = re.compile(r" \(run of (\d{4}-\d{2}-\d{2})\)$")
Row = list[Any]  # [case, mithril s, reference s, ratio, target or None]
WHY = {
    "compile-torch": "Half of mithril-torch's ml.compile is CPython compiling the generated source (two functions "
    "of about 7 lines per layer), which grows a little faster than linearly for one very long function. The "
    "per-node liveness scan is linear (codegen.free_after_last_use).",
    "compile": "CPython compiling the generated source, which grows a little faster than linearly for one very "
    "long function (about 12-13x from 100 to 1000 layers before issue 12 too); ml.compile pauses the cyclic "
    "garbage collector while it builds, so no collection adds to it.",
    "construct": "Python's cyclic garbage collector, not the solver: a full collection runs about once per "
    "quarter of the live heap allocated, and traverses every live object, including the frameworks' own. At 100 "
    "layers none runs; at 1000 the first one does, so the ratio jumps. Beyond that the cost per layer is flat "
    "(measured with torch and jax imported: 158, 111 and 132 us per layer at 1000, 2000 and 4000 layers), i.e. "
    "construction grows linearly; with `gc` disabled 100 -> 1000 layers is 9.5x. Construction is the user's own "
    "incremental code, so the collector stays on there (ml.compile pauses it while it builds).",
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
    "ggml": "At 20-64-10 the arithmetic is about a microsecond, so ggml's fixed cost per graph compute and its "
    "small-matrix kernels make the row. It was 0.93-0.96 on the Intel Xeon the earlier reports ran on; on the "
    "AMD EPYC VM of 2026-12-05 the same generated call spends about 27 us inside ggml_graph_compute even on one "
    "thread (profiled: the Python around it, weight check included, is about 3 us), against 9 us for NumPy's "
    "whole call. A lead, not yet checked: this build of ggml-python has llamafile's sgemm off "
    "(`ggml_cpu_has_llamafile()` is 0), so small float32 matmuls run one short dot product per output element "
    "(ggml's own fixed cost per compute is about 1 us here). The memory-bound rows are not affected.",
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


def hand_rows(backend: str) -> dict[str, Any]:
    """Per-call rows of benchmarks/bench_<backend>.py, one row function at a time; failures as "function: error"."""
    sys.path.insert(0, str(BENCH))
    module = importlib.import_module(f"bench_{backend}")
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    rows: list[Row] = []
    failed: list[str] = []
    for name, args in ROW_FUNCTIONS[backend]:
        try:
            rows += [list(row) for row in getattr(module, name)(*args)]
        except Exception as exc:  # noqa: BLE001 - a backend mid-migration fails one model, not the report
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return {"rows": rows, "failed": failed}


def _model(case: str) -> str:
    """The model a row measures: "MLP", "CNN" or "1-D CNN"."""
    return "1-D CNN" if "1-D CNN" in case else "CNN" if "CNN" in case else "MLP"


def _case(case: str) -> str:
    """The CASES entry a row belongs to."""
    return f"{_model(case)} {'forward+backward' if 'backward' in case else 'forward'}"


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


def _seconds(text: str) -> float | None:
    """Inverse of _us and _ms: "9.1 µs", "11.36 ms", "1.2 s" or "–" as seconds."""
    value, _, unit = text.strip().partition(" ")
    if not unit:
        return None
    return float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def read_report(path: Path) -> dict[str, Any]:
    """The per-call rows, compile rows and memory section of an earlier docs/benchmarks.md.

    Rows that were already carried over from an earlier run keep their "(run of DATE)" mark; the others get
    the report's own date.
    """
    text = path.read_text()
    match = re.search(r"on (\d{4}-\d{2}-\d{2})", text)
    date = match.group(1) if match else "unknown date"
    stamp = f" (run of {date})"
    found: dict[str, Any] = {"date": date, "hand": {}, "keras": {}, "compile": {}, "memory": []}
    section, backend = "", ""
    for line in text.splitlines():
        if line.startswith("## "):
            section, backend = line[3:], ""
        elif line.startswith("### "):
            backend = line[4:].strip()
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if section == "Memory":
            found["memory"].append(line)
        elif section in PER_CALL_SECTIONS and backend and len(cells) == 5 and cells[0] != "case":
            case = cells[0] if FROM_RUN.search(cells[0]) else cells[0] + stamp
            ratio = float(cells[3].split()[0])
            target = None if cells[4] == "–" else float(cells[4])
            found[PER_CALL_SECTIONS[section]].setdefault(backend, []).append(
                [case, _seconds(cells[1]), _seconds(cells[2]), ratio, target]
            )
        elif section == "Compile time" and len(cells) in (6, 7) and cells[0] != "backend" and cells[2] != "":
            keys = ("build_s", "compile_s", "first_call_s", "second_call_s", "first_grad_call_s")
            times = dict(zip(keys, map(_seconds, cells[2:])))
            name = cells[0].split()[0]
            run = FROM_RUN.search(cells[0])
            comp = found["compile"].setdefault(name, {"mlp": {}, "run": run.group(1) if run else date})
            if cells[1].startswith("MLP N = "):
                comp["mlp"][cells[1].removeprefix("MLP N = ")] = times
            else:
                comp[{"ResNet-18": "resnet18", "quick start CNN": "quickstart_cnn"}[cells[1]]] = times
    if found["memory"] and any(line.startswith("Skipped") for line in found["memory"]):
        found["memory"] = []
    return found


def carry_over(results: dict[str, Any], previous: dict[str, Any]) -> None:
    """Fill what failed in this run with the rows of the previous report, each marked with its run's date."""
    for backend, res in results["hand"].items():
        old = previous["hand"].get(backend, [])
        if "error" in res and old:
            results["hand"][backend] = {"rows": old, "failed": [res["error"]]}
        elif res.get("failed"):
            fresh = {FROM_RUN.sub("", r[0]) for r in res["rows"]}
            models = {ROW_MODEL.get(f.split(":")[0]) for f in res["failed"]}
            res["rows"] += [r for r in old if FROM_RUN.sub("", r[0]) not in fresh and _model(r[0]) in models]
    for backend, res in results["keras"].items():
        if ("error" in res or "skipped" in res) and backend in previous["keras"]:
            reason = res.get("error") or res["skipped"]
            results["keras"][backend] = {"rows": previous["keras"][backend], "failed": [reason]}
    for backend, comp in results["compile"].items():
        if "error" in comp and backend in previous["compile"]:
            results["compile"][backend] = {**previous["compile"][backend], "failed": comp["error"]}
    if "error" in results["memory"] and previous["memory"]:
        results["memory"] = {"previous": previous["memory"], "failed": results["memory"]["error"]}


def _us(seconds: float | None) -> str:
    """Microseconds or milliseconds, readable."""
    if seconds is None:
        return "–"
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _ms(seconds: float) -> str:
    """Milliseconds with sensible precision."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _ms_or_dash(seconds: float | None) -> str:
    """_ms, or "–" for a measurement an earlier report did not make."""
    return "–" if seconds is None else _ms(seconds)


def _verdict(value: float, target: float) -> str:
    """'met' or 'missed by N %' for a value that must stay at or under target."""
    return "met" if value <= target else f"**missed** by {(value / target - 1) * 100:.0f} %"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(target, backend, measured, verdict, why) for every target the issue sets."""
    out = []
    imp = results["import"]["import_s"]
    out.append((f"`import mithril` < {IMPORT_TARGET_S} s", "–", _ms(imp), _verdict(imp, IMPORT_TARGET_S), ""))
    for name, comp in results["compile"].items():
        if "error" in comp:
            continue
        backend = f"{name} (run of {comp['run']})" if "failed" in comp else name
        mlp = {int(k): v for k, v in comp["mlp"].items()}
        ratio = mlp[1000]["compile_s"] / mlp[100]["compile_s"]
        why = WHY.get(f"compile-{name}", WHY["compile"]) if ratio > 12 else ""
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
        was = results.get("before", {}).get("compile_s", {}).get(name)
        if was and "failed" not in comp:
            out.append(
                (
                    f"1000-layer MLP ml.compile ≤ before ({_ms(was)})",
                    backend,
                    _ms(mlp[1000]["compile_s"]),
                    _verdict(mlp[1000]["compile_s"], was),
                    "",
                )
            )
        if name == "numpy":
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


def _failures(res: dict[str, Any]) -> list[str]:
    """A paragraph naming what failed in this run, whose rows (marked "run of DATE") come from an earlier report."""
    if not res.get("failed"):
        return []
    what = "; ".join(f"`{f}`" for f in res["failed"])
    return [
        f'Not measured in this run: {what}. Rows marked "(run of DATE)" are kept from the previous report.',
        "",
    ]


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
        f"{elapsed / 60:.1f} minutes on {time.strftime('%Y-%m-%d')}; every number up to the Memory section comes "
        "from that run; the sections after it come from their own scripts and say when they ran.",
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
        "python benchmarks/report.py --json after.json --before before*.json --change 'issue 12'  # before/after",
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
    if "before" in results:
        lines += ["", *_before_after(results)]
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
        "The quick start MLP (20-64-10, batch 32), CNN (batch 32, 3x32x32) and 1-D CNN "
        "(`mithril.testing.models.quickstart_cnn1d`: Conv1d k=5, BatchNorm1d, ReLU, MaxPool1d(2), Linear; batch 32, "
        "4x64), the CNNs in training mode, against the same network written by hand in the backend's framework "
        "(rows from `benchmarks/bench_<backend>.py`; NumPy's CNNs in `hand_numpy_cnn.py` and `hand_numpy_cnn1d.py`; "
        "torch single-threaded; the GGML rows compare with Mithril's NumPy backend, or as the case says: first vs "
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
        lines += [*_failures(res), *_per_call_table(res["rows"], reference), ""]
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
        version = [f"Keras {res['keras']}.", ""] if "keras" in res else []
        lines += [*version, *_failures(res), *_per_call_table(res["rows"], "Keras 3"), ""]
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


def read_before(paths: list[Path]) -> dict[str, Any]:
    """Earlier `report.py --json` runs: per row the run with the lowest Mithril time and every run's ratio;
    per backend the lowest ml.compile time of the 1000-layer MLP."""
    runs = [json.loads(path.read_text()) for path in paths]
    hand: dict[str, dict[str, Any]] = {}
    for run in runs:
        for backend, res in run["hand"].items():
            for row in res.get("rows", []):
                entry = hand.setdefault(backend, {}).setdefault(row[0], {"best": row, "ratios": []})
                entry["ratios"].append(row[3])
                if row[1] < entry["best"][1]:
                    entry["best"] = row
    compile_s = {}
    for backend in runs[0]["compile"]:
        times = [r["compile"][backend]["mlp"]["1000"]["compile_s"] for r in runs if "mlp" in r["compile"][backend]]
        if times:
            compile_s[backend] = min(times)
    loads = [r["machine"].get("load average at start (1, 5, 15 min)", "?").split(",")[0] for r in runs]
    return {"runs": len(runs), "loads": loads, "hand": hand, "compile_s": compile_s}


def _before_after(results: dict[str, Any]) -> list[str]:
    """Markdown lines comparing this run's ratios and compile times with the --before runs."""
    before, change = results["before"], results["change"]
    rows, met = [], [0, 0]
    for backend, res in results["hand"].items():
        old = before["hand"].get(backend, {})
        for case, c, _, ratio, target in res.get("rows", []):
            if FROM_RUN.search(case) or case not in old:
                continue
            best, ratios = old[case]["best"], old[case]["ratios"]
            mark = "" if target is None else (" ✓" if ratio <= target else " ✗")
            spread = f"{min(ratios):.3f}–{max(ratios):.3f}"
            rows.append(
                f"| {backend} | {case} | {best[3]:.3f} ({_us(best[1])}) | {spread} | {ratio:.3f}{mark} ({_us(c)}) | "
                f"{'–' if target is None else f'{target:.2f}'} |"
            )
            if target is not None:
                met[0] += best[3] <= target
                met[1] += ratio <= target
    counted = sum(1 for row in rows if not row.endswith("| – |"))
    compile_rows = []
    for backend, comp in results["compile"].items():
        if backend in before["compile_s"] and "mlp" in comp and "failed" not in comp:
            was, now = before["compile_s"][backend], comp["mlp"]["1000"]["compile_s"]
            compile_rows.append(f"| {backend} | {_ms(was)} | {_ms(now)} | {now / was:.2f} |")
    lines = [
        f"## Before and after {change}",
        "",
        f"Before: {before['runs']} runs of this report on the tree before {change} (load average at their starts: "
        f"{', '.join(before['loads'])}); per row the run with the lowest Mithril time, and the spread of the ratio "
        "over all of them. After: this run. Ratios are Mithril / reference within one run, so they compare across "
        "runs even when the load differed; absolute times (in brackets) do not, and rows of 5-20 µs move by tens of "
        f"percent between runs on this shared machine. Of the {counted} rows with a target measured both times, "
        f"{met[0]} met today's target before and {met[1]} after. Rows new in this run (the 1-D CNN, GGML's CNN "
        "forward+backward) have no before; rows carried over from an earlier report are left out.",
        "",
        "| backend | case | before | before, all runs | after | target |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    if compile_rows:
        lines += [
            "`ml.compile` of the 1000-layer MLP (target: no slower than before; before = fastest run's median):",
            "",
            "| backend | before | after | after / before |",
            "|---|---:|---:|---:|",
            *compile_rows,
            "",
        ]
    return lines


def _compile_section(results: dict[str, Any], figures: list[str]) -> list[str]:
    """Markdown lines of the compile-time tables."""
    lines = [
        "## Compile time",
        "",
        "Construction is the logical model's `|=`/`+=` composition with incremental shape solving; "
        "`ml.compile` flattens, completes shapes and lowers (for JAX with jit: builds the program). The first "
        "call includes JAX's trace and XLA compilation and GGML's graph build. MLPs are N x (Linear(32) + Relu), "
        "batch 16; ResNet-18 (`benchmarks/resnet.py`, 11.7 M parameters) at 1x3x224x224. Medians of 7 fresh "
        "models (3 for N = 1000 and ResNet-18, 15 for the quick start CNN); the first calls once. The first "
        "gradient call, after them, includes NumPy generating its backward pass (not done by ml.compile) and "
        "JAX tracing and compiling it.",
        "",
        "| backend | model | construction | ml.compile | first call | second call | first gradient call |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, comp in results["compile"].items():
        if "error" in comp:
            lines.append(f"| {name} | skipped: {comp['error']} | | | | | |")
            continue
        backend = f"{name} (run of {comp['run']})" if "failed" in comp else name
        entries = [(f"MLP N = {n}", r) for n, r in comp["mlp"].items()]
        entries += [("ResNet-18", comp["resnet18"]), ("quick start CNN", comp["quickstart_cnn"])]
        for model, r in entries:
            lines.append(
                f"| {backend} | {model} | {_ms(r['build_s'])} | {_ms(r['compile_s'])} | "
                f"{_ms(r['first_call_s'])} | {_ms(r['second_call_s'])} | {_ms_or_dash(r.get('first_grad_call_s'))} |"
            )
    if "compile_scaling.png" in figures:
        lines += ["", "![Compile time against N](img/compile_scaling.png)"]
    return lines + [""]


def _memory_section(mem: dict[str, Any]) -> list[str]:
    """Markdown lines of the memory comparison."""
    lines = ["## Memory", ""]
    if "error" in mem:
        return lines + [f"Skipped: {mem['error']}."]
    if "previous" in mem:
        note = f"Not measured in this run (`{mem['failed']}`); the rest of this section is the previous report's."
        return [*lines, note, *mem["previous"][1:]]
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
        fig, axes = plt.subplots(1, len(CASES), figsize=(3.5 * len(CASES), 4))
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


def kept_sections(old: str, new: str) -> str:
    """The `## ` sections of the old report that this script does not write (the training step, transformer
    and data-parallel tables, measured by their own scripts and written up by hand), to append unchanged."""
    written = {line for line in new.splitlines() if line.startswith("## ")}
    sections = ["## " + part for part in old.split("\n## ")[1:]]
    kept = [section.rstrip("\n") + "\n" for section in sections if section.splitlines()[0] not in written]
    return "".join("\n" + section for section in kept)


def main() -> None:
    """Command line: the whole report, or (--worker BACKEND) one backend's hand-written rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=BACKENDS, help="print one backend's hand-written rows as JSON")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where benchmarks.md and img/ go")
    parser.add_argument("--json", type=Path, help="also save the raw measurements there")
    parser.add_argument("--before", type=Path, nargs="+", help="earlier `--json` outputs to compare with, row by row")
    parser.add_argument("--change", default="the change", help="what happened between --before and now")
    args = parser.parse_args()
    if args.worker:
        payload: dict[str, Any] = {"backend": args.worker, **hand_rows(args.worker)}
        if args.worker == "ggml":
            payload["accuracy"] = [list(row) for row in importlib.import_module("bench_ggml").accuracy_rows()]
        print(json.dumps(payload))
        return
    import mithril as ml

    report = args.docs / "benchmarks.md"
    previous = read_report(report) if report.exists() else None
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
    if previous:
        carry_over(results, previous)
    if args.before:
        results["before"], results["change"] = read_before(args.before), args.change
    results["machine"]["load average at end (1, 5, 15 min)"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    figures = plot(results, args.docs / "img")
    args.docs.mkdir(parents=True, exist_ok=True)
    text = markdown(results, time.perf_counter() - start, figures)
    report.write_text(text + kept_sections(report.read_text() if previous else "", text))
    print(f"wrote {report} and {len(figures)} figures in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
