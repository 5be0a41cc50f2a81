"""DerivedValues: a value derived once per (object, tag), kept while the object lives."""

from __future__ import annotations

import gc
import threading

import numpy as np

from mithril.derived import DerivedValues


def test_a_value_is_derived_once_per_object_and_tag() -> None:
    values, calls = DerivedValues(), []
    weight = np.arange(6.0).reshape(2, 3)

    def transpose() -> np.ndarray:
        calls.append(1)
        return np.ascontiguousarray(weight.T)

    first = values.get(weight, "t", transpose)
    assert values.get(weight, "t", transpose) is first and len(calls) == 1
    assert values.get(weight, "double", lambda: weight * 2) is not first and len(values) == 2
    assert values.get(weight.copy(), "t", transpose) is not first and len(calls) == 2  # an equal array is another


def test_values_go_with_their_object_and_a_reused_id_derives_anew() -> None:
    values = DerivedValues()
    weight = np.ones(4)
    key = (id(weight), "t")
    values.get(weight, "t", lambda: np.zeros(4))
    assert key in values
    del weight
    gc.collect()
    assert key not in values and len(values) == 0
    for _ in range(50):  # ids get reused: a new object at an old address never sees the old value
        fresh = np.ones(4)
        assert values.get(fresh, "t", lambda fresh=fresh: fresh * 3)[0] == 3
        del fresh


def test_threads_asking_at_once_each_get_a_value_and_nothing_is_left_behind() -> None:
    values = DerivedValues()
    weights = [np.full(3, float(i)) for i in range(8)]
    results: list[float] = []

    def work(arrays: list[np.ndarray]) -> None:
        for w in arrays * 20:
            results.append(float(values.get(w, "sum", lambda w=w: w.sum())))

    threads = [threading.Thread(target=work, args=(weights,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == [3.0 * i for i in range(8)] and len(values) == 8
    del weights, threads  # a finished thread still holds its arguments
    gc.collect()
    assert len(values) == 0
