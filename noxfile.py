"""Nox sessions for Mithril: the backend x dtype x hardware test matrix, plugin isolation, lint,
typecheck and benchmarks.

`nox -l` lists every session; plain `nox` runs the CPU test matrix (but the `BY_NAME_ONLY` cells),
`integration`, `parity`, `distributed`, `plugins`, `lint`, `typecheck`, `docs` and `third_party`.
Every pytest run prints the reason of each skipped test (`-ra`). The test cells of one backend
share one virtual environment, in nox's shared cache folder (`.nox/.cache/venvs/<backend>-<hardware>`):
it is installed once and reused across the dtype cells of a run, and across runs while the
requirements, the constraints and the installed packages' pyproject.toml files are unchanged;
`rm -rf .nox` forces a fresh install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"

ROOT = Path(__file__).parent
PACKAGES = ROOT / "packages"
CONSTRAINTS = ROOT / "constraints" / "ci.txt"
WHEELS = Path("/opt/wheels")
# ONNX readers; real data (digits); Hugging Face models the zoo's parity tests compare against
TEST_DEPS = ("pytest", "hypothesis", "onnx", "onnxruntime", "scikit-learn", "transformers")

# What each backend supports; a cell exists for every (dtype, hardware) pair listed here.
DTYPES: dict[str, tuple[str, ...]] = {
    "numpy": ("float32", "float64", "float16"),
    "torch": ("float32", "float64", "float16", "bfloat16"),
    "jax": ("float32", "float64", "float16", "bfloat16"),
    "ggml": ("float32",),
}
HARDWARE: dict[str, tuple[str, ...]] = {
    "numpy": ("cpu",),
    "torch": ("cpu", "cuda"),
    "jax": ("cpu", "cuda"),
    "ggml": ("cpu",),
}
# Framework requirements per (backend, hardware); versions come from constraints/ci.txt.
FRAMEWORKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("numpy", "cpu"): (),
    ("torch", "cpu"): ("torch",),
    ("torch", "cuda"): ("torch",),
    ("jax", "cpu"): ("jax", "jaxlib"),
    ("jax", "cuda"): ("jax[cuda12]", "jaxlib"),
    ("ggml", "cpu"): ("ggml-python", "gguf"),
}
# Proof, run inside a cuda cell's environment, that the framework itself sees the GPU.
CUDA_PROBES = {
    "torch": "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device'",
    "jax": "import jax; print(jax.devices('gpu'))",
}
# The NumPy backend is the reference semantics the other plugins' tests compare against, so
# their cells install it too; the `plugins` session proves each plugin works without it.
REFERENCE = "numpy"
# The one cell that also runs the core's tests and the cross-package tests in tests/.
CORE_CELL = ("numpy", "float32", "cpu")
# Backends whose CPU cells `nox` runs by default.
DEFAULT_BACKENDS = ("numpy", "torch", "jax", "ggml")
# The plugins whose cells have no torch: their torch.nn parity tests (every test named *torch*)
# run in the `parity` session, in the dtypes torch parity is checked in, that the plugin supports.
PARITY_BACKENDS = tuple(backend for backend in DTYPES if "torch" not in FRAMEWORKS[backend, "cpu"])
PARITY_DTYPES = ("float32", "float64")

MATRIX = [
    nox.param(backend, dtype, hardware, tags=[backend, hardware])
    for backend, dtypes in DTYPES.items()
    for hardware in HARDWARE[backend]
    for dtype in dtypes
]


def _cell_name(backend: str, dtype: str, hardware: str) -> str:
    return f"tests(backend='{backend}', dtype='{dtype}', hardware='{hardware}')"


# Cells kept out of plain `nox` (CI's 30-minute budget on 2 cores): JAX's half-precision cells take
# about as long as the rest of the matrix together (a jit compile per conformance case). They run
# by name, e.g. `nox -s "tests(backend='jax', dtype='bfloat16', hardware='cpu')"`, or all with `nox -t jax`.
BY_NAME_ONLY = {("jax", "float16"), ("jax", "bfloat16")}

nox.options.sessions = [
    *(
        _cell_name(backend, dtype, "cpu")
        for backend in DEFAULT_BACKENDS
        for dtype in DTYPES[backend]
        if (backend, dtype) not in BY_NAME_ONLY
    ),
    "integration",
    "parity",
    "distributed",
    "plugins",
    "lint",
    "typecheck",
    "docs",
    "third_party",
]


def _pip_options(*, local_wheels: bool = True) -> list[str]:
    """Constraints for every install, plus the machine's local wheel folder where it exists.

    --no-compile: byte-compiling the frameworks' every file at install costs more than the few
    modules a test run imports.
    """
    options = ["--no-compile", "-c", str(CONSTRAINTS)]
    if local_wheels and WHEELS.is_dir():
        options += ["--find-links", str(WHEELS)]
    return options


def _plugin_dir(session: nox.Session, backend: str) -> Path:
    """The plugin's package directory; the session fails when it does not exist."""
    path = PACKAGES / f"mithril-{backend}"
    if not (path / "pyproject.toml").is_file():
        session.error(f"{path.relative_to(ROOT)} does not exist: the {backend} plugin is not written yet")
    return path


def _editable(*paths: Path) -> list[str]:
    return [arg for path in paths for arg in ("-e", str(path))]


def _cuda_missing() -> str | None:
    """Why no NVIDIA GPU can be used here, or None when `nvidia-smi -L` lists one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi not found"
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "GPU" not in proc.stdout:
        return f"nvidia-smi -L lists no GPU ({(proc.stderr or proc.stdout).strip() or proc.returncode})"
    return None


def _shared_venv(session: nox.Session, name: str, requirements: Sequence[str], *, local_wheels: bool = True) -> str:
    """Python of the shared environment `name`, created and installed only when its inputs changed."""
    venv = session.cache_dir / "venvs" / name
    python = venv / "bin" / "python"
    pip_args = [*_pip_options(local_wheels=local_wheels), *requirements]
    digest = hashlib.sha256("\n".join([sys.version, *pip_args]).encode())
    digest.update(CONSTRAINTS.read_bytes())
    for path in requirements:
        if (project := Path(path) / "pyproject.toml").is_file():
            digest.update(project.read_bytes())
    stamp = venv / "mithril-requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        session.log(f"reusing the shared environment {venv}")
        return str(python)
    if venv.exists():
        shutil.rmtree(venv)
    session.run(sys.executable, "-m", "virtualenv", "-q", str(venv), external=True)
    session.run(str(python), "-m", "pip", "install", "-q", *pip_args, external=True)
    stamp.write_text(digest.hexdigest())
    return str(python)


def _pytest(
    session: nox.Session, python: str, paths: Sequence[str], env: dict[str, str], *, none_collected: str = "skip"
) -> None:
    """Run pytest on `paths`, printing every skip's reason (-ra; a plugin's own pytest settings may
    replace the root's addopts). A run that collects no test (exit code 5) skips the session, or
    fails it with `none_collected="fail"`."""
    command = [python, "-m", "pytest", "-ra", *paths, *session.posargs]
    session.log(" ".join(command))
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=False).returncode
    if code == 5 and none_collected == "skip":
        session.skip(f"pytest collected no test in {', '.join(paths)}")
    if code != 0:
        session.error(f"pytest failed with exit code {code}")


@nox.session(venv_backend="none")
@nox.parametrize("backend, dtype, hardware", MATRIX)
def tests(session: nox.Session, backend: str, dtype: str, hardware: str) -> None:
    """One backend's test suite with one dtype on one kind of hardware."""
    start = time.perf_counter()
    plugin = _plugin_dir(session, backend)
    if hardware == "cuda" and (reason := _cuda_missing()):
        session.skip(f"no CUDA device: {reason}")
    plugin_dirs = [plugin] if backend == REFERENCE else [plugin, _plugin_dir(session, REFERENCE)]
    python = _shared_venv(
        session,
        f"{backend}-{hardware}",
        [*_editable(PACKAGES / "mithril-core", *plugin_dirs), *FRAMEWORKS[backend, hardware], *TEST_DEPS],
        local_wheels=hardware == "cpu",
    )
    if hardware == "cuda":
        session.run(python, "-c", CUDA_PROBES[backend], external=True)
    paths = [str((plugin / "tests").relative_to(ROOT))]
    if (backend, dtype, hardware) == CORE_CELL:
        paths += ["packages/mithril-core/tests", "tests", "--ignore=tests/distributed"]
    _pytest(session, python, paths, {"MITHRIL_TEST_DTYPE": dtype, "MITHRIL_TEST_HARDWARE": hardware})
    session.log(f"{session.name}: {time.perf_counter() - start:.1f} s")


@nox.session
def plugins(session: nox.Session) -> None:
    """Each plugin works alone; uninstalling one leaves the others working and names its package."""
    numpy_plugin, torch_plugin = _plugin_dir(session, "numpy"), _plugin_dir(session, "torch")
    core = PACKAGES / "mithril-core"
    session.install(*_pip_options(), *_editable(core, numpy_plugin, torch_plugin), "torch", "pytest")

    def check(expected: str) -> None:
        session.run("pytest", "-ra", "tests/plugin_isolation", env={"MITHRIL_EXPECT_BACKENDS": expected})

    check("numpy,torch")
    session.run("python", "-m", "pip", "uninstall", "-y", "mithril-torch")
    check("numpy")
    session.run("python", "-m", "pip", "uninstall", "-y", "mithril-numpy")
    session.install(*_pip_options(), "--no-deps", *_editable(torch_plugin))
    check("torch")


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff's linter and formatter check over every package, the tests, benchmarks, examples and this file."""
    session.install(*_pip_options(), "ruff")
    paths = ("packages", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy on the core and its test kit (settings in pyproject.toml: untyped definitions are errors)."""
    session.install(*_pip_options(), "mypy", "-e", f"{PACKAGES / 'mithril-core'}[test]")
    session.run("mypy", "packages/mithril-core/src", *session.posargs)


def _all_backends_venv(session: nox.Session, name: str = "all-cpu", extra: Sequence[str] = ("mkdocs",)) -> str:
    """Python of the shared environment `name` with the core, every plugin, their CPU frameworks and `extra`.

    `integration`, `parity` and `docs` share the default one, so CI installs the frameworks together once.
    """
    plugin_dirs = [_plugin_dir(session, backend) for backend in DTYPES]
    frameworks = sorted({req for backend in DTYPES for req in FRAMEWORKS[backend, "cpu"]})
    return _shared_venv(
        session, name, [*_editable(PACKAGES / "mithril-core", *plugin_dirs), *frameworks, *TEST_DEPS, *extra]
    )


@nox.session(venv_backend="none")
def integration(session: nox.Session) -> None:
    """tests/ with every backend installed (the quick start needs them all)."""
    python = _all_backends_venv(session)
    env = {"MITHRIL_TEST_DTYPE": "float32", "MITHRIL_TEST_HARDWARE": "cpu"}
    _pytest(session, python, ["tests", "--ignore=tests/docs", "--ignore=tests/distributed"], env)


@nox.session(venv_backend="none")
def distributed(session: nox.Session) -> None:
    """tests/distributed: two processes on 127.0.0.1 (torchrun with gloo; two JAX processes with 4 CPU
    devices each), every job bounded in time; a run that selects no test fails."""
    python = _all_backends_venv(session)
    _pytest(session, python, ["tests/distributed"], {}, none_collected="fail")


@nox.session(venv_backend="none")
def parity(session: nox.Session) -> None:
    """The torch.nn parity tests of the plugins whose own cells have no torch: NumPy, JAX and GGML.

    Each plugin's tests named *torch* (`-k torch`), with torch present, once per dtype that both
    torch parity and the plugin support. A run that selects no test fails: the parity tests must
    not silently vanish."""
    python = _all_backends_venv(session)
    for backend in PARITY_BACKENDS:
        tests_dir = str((_plugin_dir(session, backend) / "tests").relative_to(ROOT))
        for dtype in (dtype for dtype in DTYPES[backend] if dtype in PARITY_DTYPES):
            env = {"MITHRIL_TEST_DTYPE": dtype, "MITHRIL_TEST_HARDWARE": "cpu"}
            _pytest(session, python, [tests_dir, "-k", "torch"], env, none_collected="fail")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Every Python block of every docs/ page runs (tests/docs), then `mkdocs build --strict`."""
    python = _all_backends_venv(session)
    _pytest(session, python, ["tests/docs"], {})
    site = Path(session.create_tmp()) / "site"
    session.run(python, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), external=True)


@nox.session(venv_backend="none")
def third_party(session: nox.Session) -> None:
    """The example third-party backend (examples/third_party_backend) installed beside the core: its tests."""
    package = ROOT / "examples" / "third_party_backend"
    python = _shared_venv(
        session,
        "third-party",
        [*_editable(PACKAGES / "mithril-core", _plugin_dir(session, REFERENCE), package), "torch", *TEST_DEPS],
    )
    _pytest(session, python, [str((package / "tests").relative_to(ROOT))], {})


@nox.session(venv_backend="none", default=False)
def bench(session: nox.Session) -> None:
    """Every benchmarks/bench_*.py, then benchmarks/report.py, which writes docs/benchmarks.md and docs/img/."""
    python = _all_backends_venv(session, name="bench-cpu", extra=("keras", "matplotlib"))
    for script in [*sorted((ROOT / "benchmarks").glob("bench_*.py")), ROOT / "benchmarks" / "report.py"]:
        start = time.perf_counter()
        session.run(python, str(script.relative_to(ROOT)), *session.posargs, external=True)
        session.log(f"{script.name}: {time.perf_counter() - start:.1f} s")
