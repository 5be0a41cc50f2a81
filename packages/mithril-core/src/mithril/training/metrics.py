"""Metrics `ml.Trainer` reports beside the loss, computed on the host from a batch's outputs and targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["METRICS", "accuracy", "resolve_metrics"]

Metric = Callable[[np.ndarray, np.ndarray], float]


def accuracy(output: np.ndarray, target: np.ndarray) -> float:
    """Fraction of rows whose highest score is the target class (class axis 1, or the only axis).

    Targets may be class indices or class probabilities (compared by their highest entry).
    """
    axis = 1 if output.ndim > 1 else 0
    predicted = np.argmax(output, axis=axis)
    classes = np.argmax(target, axis=axis) if target.shape == output.shape and output.ndim > 1 else target
    return float(np.mean(predicted == classes))


METRICS: dict[str, Metric] = {"accuracy": accuracy}


def resolve_metrics(names: Sequence[str | Metric]) -> dict[str, Metric]:
    """Metric functions by name: the built-in names, or `(output, target) -> float` callables by their __name__."""
    if isinstance(names, str):
        names = [names]
    out: dict[str, Metric] = {}
    for item in names:
        if callable(item):
            out[getattr(item, "__name__", "metric")] = item
        elif item in METRICS:
            out[item] = METRICS[item]
        else:
            raise ValueError(f"ml.Trainer: unknown metric {item!r}; known metrics are {sorted(METRICS)} or a callable")
    return out
