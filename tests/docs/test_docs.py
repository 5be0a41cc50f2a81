"""Every Python code block of every page under docs/ runs, in order, in one namespace per page.

Page directives (HTML comments, invisible in the rendered docs):

- `<!-- docs-test requires: torch, jax -->`: the page needs these backends; without one the
  page is skipped, naming the package to install.
- `<!-- docs-test env: NAME=value -->`: an environment variable the page's process needs
  (for example XLA_FLAGS, which must be set before jax is imported).
- `<!-- no-run: reason -->` right before a ```python fence: that block is not executed.
  The reason is required and should be rare (a TPU that is not here).

Output comments are checked against what the line prints (in the same run). The pages write
them two ways:

- on the `print(...)` line itself: `print(x.shape)  # (8, 2)`;
- as comment lines right below the line a `print(...)` call ends on, one per printed line, for
  a print that runs several times (in a loop) or prints several lines:
  `    print(error)` then `# ShapeError: ...`.

`...` stands for any elided text (`['a', ..., 'z']`, or a long message cut short with a
trailing ` ...`), and a note may follow the output after a colon (`# (8, 8): one gradient for
both uses`). A comment of three or more plain lowercase words (`# the forward function`)
describes the output in words and is not compared.

Each page runs in a fresh Python process (so env directives work and pages cannot leak into
each other), from a temporary directory. Lines outside runnable blocks are blanked, so a
traceback gives the Markdown file's own line numbers.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mithril as ml
from mithril.plugins.registry import install_command

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*$")
REQUIRES = re.compile(r"<!--\s*docs-test requires:\s*(.*?)\s*-->")
ENV = re.compile(r"<!--\s*docs-test env:\s*(\w+)=(.*?)\s*-->")
# A comment that describes the output in words rather than showing it.
DESCRIPTION = re.compile(r"[a-z][a-z']*(?: [a-z][a-z']*){2,}")
# Runs the page (stdin) as `__main__` with print recording, per page line, what it printed to
# stdout; the record (a JSON list of [line, text]) goes to argv[2], also when the page fails.
RUNNER = """
import builtins, json, sys
path, record = sys.argv[1], sys.argv[2]
printed, builtin_print = [], builtins.print

def recording_print(*args, sep=" ", end="\\n", file=None, flush=False):
    if file is None or file is sys.stdout:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != path:
            frame = frame.f_back
        if frame is not None:
            printed.append([frame.f_lineno, (" " if sep is None else sep).join(map(str, args))])
    builtin_print(*args, sep=sep, end=end, file=file, flush=flush)

builtins.print = recording_print
try:
    exec(compile(sys.stdin.read(), path, "exec"), {"__name__": "__main__"})
finally:
    with open(record, "w") as f:
        json.dump(printed, f)
"""
PLUGIN_ENV = ("MITHRIL_PLUGINS", "MITHRIL_DISABLE_PLUGIN_AUTOLOAD")


@dataclass
class Claim:
    """An output comment: the `print(...)` call on lines first..last shows `expected` (a line each)."""

    first: int
    last: int
    line: int  # where the comment starts
    expected: list[str]

    def check(self, printed: list[tuple[int, str]]) -> str | None:
        """Why the printed text contradicts the comment, or None."""
        text = "\n".join(out for line, out in printed if self.first <= line <= self.last)
        if len(self.expected) == 1 and DESCRIPTION.fullmatch(self.expected[0]):
            return None
        if any(_matches(shown, text) for shown in _without_note(self.expected)):
            return None
        shown = "\n".join(f"# {line}" for line in self.expected)
        return f"line {self.line}: the comment says\n{shown}\nbut the line printed\n{text or '(nothing)'}"


def _without_note(expected: list[str]) -> list[list[str]]:
    """The comment as written, then with a `: note` cut from its last line (at each colon)."""
    *head, last = expected
    cuts = [m.start() for m in re.finditer(": ", last)]
    return [expected, *([*head, last[:cut]] for cut in reversed(cuts))]


def _matches(expected: list[str], text: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in re.split(r"\s*\.\.\.\s*", "\n".join(expected)))
    return re.fullmatch(pattern, text.rstrip(), re.S) is not None


@dataclass
class Page:
    """One Markdown page: its runnable source (line numbers kept) and its directives."""

    path: Path
    source: str
    blocks: int
    skipped: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)


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
    page.claims = output_claims(page.source)
    return page


def output_claims(source: str) -> list[Claim]:
    """The output comments of `source`: trailing a `print(...)` line, or the run of comment lines below it."""
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            alone = not token.line[: token.start[1]].strip()
            comments[token.start[0]] = (token.string[1:].strip(), alone)
    claims = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"):
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        trailing = comments.get(last)
        if trailing is not None and not trailing[1]:
            claims.append(Claim(first, last, last, [trailing[0]]))
            continue
        below, line = [], last + 1
        while line in comments and comments[line][1]:
            below.append(comments[line][0])
            line += 1
        if below:
            claims.append(Claim(first, last, last + 1, below))
    return sorted(claims, key=lambda claim: claim.line)


PAGES = sorted(DOCS.rglob("*.md"))


def _missing_backend(names: list[str]) -> str | None:
    """Why the page cannot run here (a backend missing or broken), or None."""
    available = ml.available_backends()
    for name in names:
        info = available.get(name)
        if info is None:
            return f"needs the {name} backend: {install_command(f'mithril-{name}', name)}"
        if info.error is not None:
            return f"the {name} plugin failed to load: {info.error}"
    return None


def test_docs_have_pages_with_code() -> None:
    assert sum(parse(page).blocks for page in PAGES) >= 20, "expected the user guide's code blocks"


def test_docs_have_output_comments() -> None:
    assert sum(len(parse(page).claims) for page in PAGES) >= 20, "expected the pages' output comments"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs_and_prints_what_its_comments_say(path: Path, tmp_path: Path) -> None:
    page = parse(path)
    if page.blocks == 0:
        pytest.skip("the page has no Python code block")
    if (reason := _missing_backend(page.requires)) is not None:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV} | page.env
    record = tmp_path / "printed.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), str(record)],
        input=page.source,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    printed = [(line, text) for line, text in json.loads(record.read_text())]
    stale = [why for claim in page.claims if (why := claim.check(printed)) is not None]
    assert not stale, f"{path.relative_to(DOCS)}: output comments that do not match:\n\n" + "\n\n".join(stale)


CHECKER_SAMPLE = """
print([1, 2, 3])  # [1, 2, 3]
print((8, 8))  # (8, 8): one gradient for both uses
print(list(range(9)))  # [0, 1, ..., 8]
print("a long message that goes on")  # a long message ...
print({"w": "Q8_0"})  # storage type of every parameter
for word in ["a", "b"]:
    print(word)
# a
# b
print(2)  # 3
print("x: y")  # x
for word in ["a", "c"]:
    print(word)
# a
# b
"""


def test_output_comments_are_compared_with_what_their_line_printed() -> None:
    claims = output_claims(CHECKER_SAMPLE)
    assert [claim.line for claim in claims] == [2, 3, 4, 5, 6, 9, 11, 12, 15]
    printed = [(2, "[1, 2, 3]"), (3, "(8, 8)"), (4, str(list(range(9)))), (5, "a long message that goes on")]
    printed += [(6, "{'w': 'Q8_0'}"), (8, "a"), (8, "b"), (11, "2"), (12, "x: y"), (14, "a"), (14, "c")]
    stale = {claim.line: claim.check(printed) for claim in claims}
    assert [line for line, why in stale.items() if why is not None] == [11, 12, 15]
    assert "# 3\nbut the line printed\n2" in str(stale[11])
