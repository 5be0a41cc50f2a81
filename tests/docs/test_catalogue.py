"""The catalogue table of the logical-models page lists every layer of `mithril.models`, one row each."""

from __future__ import annotations

import re
from pathlib import Path

from mithril.models import attention, layers, sequence
from mithril.primitives import PRIMITIVES

PAGE = Path(__file__).resolve().parents[2] / "docs" / "user-guide" / "logical-models.md"
ROW = re.compile(r"^\| (`\w+`(?: \(alias `\w+`\))?) \| .+ \| `(\w+)` \|$", re.M)


def _rows() -> dict[str, str]:
    """Layer name (aliases included) -> the primitive its row names."""
    return {
        name: primitive for names, primitive in ROW.findall(PAGE.read_text()) for name in re.findall(r"`(\w+)`", names)
    }


def test_every_layer_has_a_row() -> None:
    rows = _rows()
    names = [*layers.__all__, *sequence.__all__, *attention.__all__]
    assert sorted(rows) == sorted(names), (sorted(set(names) - set(rows)), sorted(set(rows) - set(names)))


def test_rows_name_declared_primitives() -> None:
    assert {p for p in _rows().values() if p not in PRIMITIVES} == set()
