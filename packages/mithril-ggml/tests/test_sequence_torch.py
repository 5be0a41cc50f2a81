"""The sequence layers on ggml equal the torch functions they follow, outputs and gradients, in float32."""

from __future__ import annotations

import pytest

import mithril as ml
from mithril.testing.sequence_parity import SEQUENCE_CASES, SequenceCase, check_sequence_case

pytest.importorskip("torch", reason="the torch parity tests need torch (the `parity` nox session installs it)")


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=lambda c: c.name)
def test_sequence_layer_matches_torch(case: SequenceCase) -> None:
    check_sequence_case(case, ml.GGMLBackend(), rtol=2e-5)
