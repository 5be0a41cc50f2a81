"""Every requirement on Mithril's own distributions, in the packages' pyproject.toml files, the
README and the docs, accepts the versions in this tree (1.0.0.dev0 is a pre-release: `>=1.0`
excludes it) and never the unrelated `mithril` 0.1.x on PyPI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = sorted(
    [*ROOT.glob("packages/*/pyproject.toml"), ROOT / "examples" / "third_party_backend" / "pyproject.toml"]
)
PAGES = sorted([ROOT / "README.md", *ROOT.glob("packages/*/README.md"), *(ROOT / "docs").rglob("*.md")])
# A requirement on one of our distributions written in prose: `mithril[jax]>=1.0.0.dev0`, `mithril>=1.0,<2`.
PROSE_REQUIREMENT = re.compile(
    r"\bmithril(?:-[a-z]+)?(?:\[[\w,]+\])?(?:\s*[<>=!~]=?\s*[\w.*+]+)(?:\s*,\s*[<>=!~]=?\s*[\w.*+]+)*"
)


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


# distribution name -> its version in this tree
VERSIONS = {_project(path)["name"]: _project(path)["version"] for path in PROJECTS}


def _ours(requirement: Requirement) -> bool:
    return requirement.name in VERSIONS


def _requirements_of(path: Path) -> list[str]:
    project = _project(path)
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(req for group in extras.values() for req in group)]


def _check(requirement: Requirement) -> str | None:
    """Why `requirement` on one of our distributions is wrong, or None."""
    version = VERSIONS[requirement.name]
    if not requirement.specifier:
        return f"{requirement} has no version range, so pip may pick the unrelated PyPI `mithril` 0.1.x"
    if not SpecifierSet(str(requirement.specifier)).contains(version, prereleases=True):
        return f"{requirement} does not accept {requirement.name} {version}, the version in this tree"
    if requirement.name == "mithril" and requirement.specifier.contains("0.1.0", prereleases=True):
        return f"{requirement} accepts the unrelated `mithril` 0.1.x"
    return None


def test_the_tree_has_the_core_and_its_plugins() -> None:
    assert {"mithril", "mithril-numpy", "mithril-torch", "mithril-jax", "mithril-ggml"} <= set(VERSIONS)


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_pyproject_requirements_accept_the_versions_in_this_tree(path: Path) -> None:
    ours = [Requirement(text) for text in _requirements_of(path) if _ours(Requirement(text))]
    wrong = [why for requirement in ours if (why := _check(requirement)) is not None]
    assert not wrong, wrong


def test_prose_requirements_accept_the_versions_in_this_tree() -> None:
    found, wrong = 0, []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in PROSE_REQUIREMENT.finditer(text):
            requirement = Requirement(match[0].rstrip("."))
            found += 1
            if (why := _check(requirement)) is not None:
                line = text.count("\n", 0, match.start()) + 1
                wrong.append(f"{page.relative_to(ROOT)}:{line}: {why}")
    assert found >= 2, "expected the README's and the docs' version ranges"
    assert not wrong, "\n".join(wrong)


def test_the_check_refuses_what_it_must() -> None:
    assert _check(Requirement("mithril>=1.0,<2")) is not None  # 1.0.0.dev0 < 1.0
    assert _check(Requirement("mithril")) is not None
    assert _check(Requirement("mithril>=0.1")) is not None
    assert _check(Requirement("mithril[jax]>=1.0.0.dev0")) is None
