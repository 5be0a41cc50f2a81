"""Timing helpers shared by the benchmark scripts: interleaved medians, ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

__all__ = ["per_call", "compare", "print_table"]


def per_call(fn: Callable[[], object], *, min_time: float = 0.2, repeats: int = 7) -> float:
    """Median seconds per call of `fn` over `repeats` runs of about `min_time` each."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time / 10 or number >= 1 << 20:
            break
        number *= 2
    number = max(1, int(number * (min_time / 10) / max(elapsed, 1e-9)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def compare(
    candidate: Callable[[], object], reference: Callable[[], object], *, rounds: int = 5, min_time: float = 0.1
) -> tuple[float, float, float]:
    """(candidate seconds, reference seconds, ratio): rounds alternate to cancel drift; medians."""
    cand, ref = [], []
    for _ in range(rounds):
        ref.append(per_call(reference, min_time=min_time, repeats=3))
        cand.append(per_call(candidate, min_time=min_time, repeats=3))
    c, r = statistics.median(cand), statistics.median(ref)
    return c, r, c / r


def print_table(title: str, rows: Sequence[tuple[str, float, float, float, float | None]]) -> None:
    """Rows of (case, mithril s, reference s, ratio, target) as a fixed-width table."""
    print(f"\n{title}")
    print(f"{'case':<44} {'mithril':>11} {'reference':>11} {'ratio':>7} {'target':>7}")
    for case, c, r, ratio, target in rows:
        mark = "" if target is None else ("  ok" if ratio <= target else "  MISS")
        tgt = "" if target is None else f"{target:.2f}"
        print(f"{case:<44} {c * 1e6:>9.1f}us {r * 1e6:>9.1f}us {ratio:>7.3f} {tgt:>7}{mark}")
