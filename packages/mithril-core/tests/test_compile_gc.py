"""ml.compile pauses Python's cyclic garbage collector while it builds, and always gives back its previous state."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mithril as ml
from mithril.testing.models import quickstart_mlp
from mithril_numpy.lowering import NumpyProgram

SHAPES = {"input": [4, 20]}


class RecordingBackend(ml.NumpyBackend):
    """NumPy that records whether the collector ran while it lowered."""

    collector_enabled: list[bool] = []

    def lower(self, graph: Any, options: Any) -> NumpyProgram:
        RecordingBackend.collector_enabled.append(gc.isenabled())
        return super().lower(graph, options)


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    """Run with the collector enabled, and leave it as it was."""
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_compile_pauses_the_collector_and_enables_it_again(collector_enabled: None) -> None:
    RecordingBackend.collector_enabled.clear()
    ml.compile(quickstart_mlp(), RecordingBackend(), shapes=SHAPES)
    assert RecordingBackend.collector_enabled == [False]
    assert gc.isenabled()


def test_compile_leaves_a_disabled_collector_disabled(collector_enabled: None) -> None:
    gc.disable()
    ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes=SHAPES)
    assert not gc.isenabled()


def test_a_failing_compile_enables_the_collector_again(collector_enabled: None) -> None:
    with pytest.raises(ml.KeyNotFoundError):
        ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"no_such_key": [4, 7]})
    assert gc.isenabled()


def test_concurrent_compiles_enable_the_collector_once_all_are_done(collector_enabled: None) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes=SHAPES)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert gc.isenabled()
