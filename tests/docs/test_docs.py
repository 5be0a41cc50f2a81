"""Every Python code block of every page under docs/ runs, in order, in one namespace per page.

Page directives (HTML comments, invisible in the rendered docs):

- `<!-- docs-test requires: torch, jax -->`: the page needs these backends; without one the
  page is skipped, naming the package to install.
- `<!-- docs-test env: NAME=value -->`: an environment variable the page's process needs
  (for example XLA_FLAGS, which must be set before jax is imported).
- `<!-- no-run: reason -->` right before a ```python fence: that block is not executed.
  The reason is required and should be rare (a TPU that is not here).

Each page runs in a fresh Python process (so env directives work and pages cannot leak into
each other), from a temporary directory. Lines outside runnable blocks are blanked, so a
traceback gives the Markdown file's own line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mithril as ml

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*$")
REQUIRES = re.compile(r"<!--\s*docs-test requires:\s*(.*?)\s*-->")
ENV = re.compile(r"<!--\s*docs-test env:\s*(\w+)=(.*?)\s*-->")
RUNNER = "import sys; path = sys.argv[1]; exec(compile(sys.stdin.read(), path, 'exec'), {'__name__': '__main__'})"
PLUGIN_ENV = ("MITHRIL_PLUGINS", "MITHRIL_DISABLE_PLUGIN_AUTOLOAD")


@dataclass
class Page:
    """One Markdown page: its runnable source (line numbers kept) and its directives."""

    path: Path
    source: str
    blocks: int
    skipped: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def parse(path: Path) -> Page:
    """Split `path` into the code to run and its directives."""
    text = path.read_text(encoding="utf-8")
    lines = [""] * text.count("\n")
    page = Page(path, "", 0)
    for match in FENCE.finditer(text):
        if match[1] != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if (reason := NO_RUN.search(before)) is not None:
            if not reason[1]:
                raise ValueError(f"{path}: a no-run marker needs a reason")
            page.skipped.append(reason[1])
            continue
        first = text.count("\n", 0, match.start(2))
        for offset, line in enumerate(match[2].splitlines()):
            lines[first + offset] = line
        page.blocks += 1
    page.source = "\n".join(lines) + "\n"
    page.requires = [n.strip() for m in REQUIRES.finditer(text) for n in m[1].split(",") if n.strip()]
    page.env = {m[1]: m[2] for m in ENV.finditer(text)}
    return page


PAGES = sorted(DOCS.rglob("*.md"))


def _missing_backend(names: list[str]) -> str | None:
    """Why the page cannot run here (a backend missing or broken), or None."""
    available = ml.available_backends()
    for name in names:
        info = available.get(name)
        if info is None:
            return f"needs the {name} backend: pip install -e packages/mithril-{name} (or mithril[{name}])"
        if info.error is not None:
            return f"the {name} plugin failed to load: {info.error}"
    return None


def test_docs_have_pages_with_code() -> None:
    assert sum(parse(page).blocks for page in PAGES) >= 20, "expected the user guide's code blocks"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(path: Path, tmp_path: Path) -> None:
    page = parse(path)
    if page.blocks == 0:
        pytest.skip("no Python code block")
    if (reason := _missing_backend(page.requires)) is not None:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV} | page.env
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path)],
        input=page.source,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
