"""Conformance examples: how the backend conformance kit exercises a primitive.

Every declaration carries its examples (`Primitive.examples`); `declare` refuses a primitive
without any, so no primitive exists without conformance cases. `mithril.testing` turns each
example (and each combination of its swept attributes) into a case that every backend runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np

    from .declaration import Primitive

__all__ = [
    "DOMAINS",
    "Example",
    "Sample",
    "Statistic",
    "check_examples",
    "dropout_mask_statistics",
    "dropout_statistics",
]

# Value domains an example may draw a float input from (the default is "any").
DOMAINS: dict[str, str] = {
    "any": "standard normal",
    "positive": "uniform in [0.5, 2]",
    "ties": "integers in {-1, 0, 1}: ties and zeros are common (kinks)",
}


@dataclass(frozen=True)
class Sample:
    """One run of a random primitive's example on a backend, every array as float64 NumPy.

    `seeds` and `grads` are the output gradients given and the gradients returned (empty
    for a forward-only run); `rtol` and `atol` are the backend dtype's tolerances.
    """

    attrs: Mapping[str, Any]
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    seeds: Mapping[str, np.ndarray]
    grads: Mapping[str, np.ndarray]
    rtol: float
    atol: float


# Asserts what a random primitive's results must satisfy, since they cannot equal the reference's.
Statistic = Callable[[Sample], None]


@dataclass(frozen=True)
class Example:
    """One way to exercise a primitive in the conformance kit.

    `shapes` gives a shape for each input present (None: a symbolic dimension, drawn at
    size 2); optional inputs left out are absent. `domain` maps float inputs to a key of
    `DOMAINS`; `ints` gives each int input its range [low, high) (an int n means [0, n)).
    `attrs` are fixed attribute values; every combination of the values in `sweep` makes
    one case. `grads`: gradients are checked (of every differentiable input present);
    `smooth`: the drawn points are not kinks, so finite differences apply there.
    `statistic` checks random primitives, whose values cannot match the reference.
    `nonfinite` names the float inputs that get NaN and ±inf planted in the example's
    nonfinite case (None: every float input; empty: no nonfinite case). Scale parameters
    (a norm's weight) are left out: torch's fused kernels turn an infinite scale into NaN
    or ±inf depending on the kernel, so there is no one rule to match.
    """

    shapes: Mapping[str, Sequence[int | None]]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    sweep: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    domain: Mapping[str, str] = field(default_factory=dict)
    ints: Mapping[str, Union[int, tuple[int, int]]] = field(default_factory=dict)
    grads: bool = True
    smooth: bool = True
    statistic: Statistic | None = None
    name: str = ""
    nonfinite: Sequence[str] | None = None

    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """(name suffix, attributes) of each case: the fixed attributes plus one combination of the swept ones."""
        keys = list(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[k] for k in keys)):
            suffix = ",".join(f"{k}={v}" for k, v in zip(keys, values))
            out.append((suffix, {**self.attrs, **dict(zip(keys, values))}))
        return out

    def int_range(self, key: str) -> tuple[int, int]:
        """The range [low, high) int input `key` is drawn from."""
        bound = self.ints[key]
        return (0, bound) if isinstance(bound, int) else bound


def check_examples(primitive: Primitive) -> None:
    """Raise ValueError unless `primitive` has examples that fit its declaration."""
    name = primitive.name
    if not primitive.examples:
        raise ValueError(f"primitive {name!r} has no conformance examples; give it examples=(Example(...), ...)")
    ports = {p.name: p for p in primitive.inputs}
    for example in primitive.examples:
        where = f"primitive {name!r}, example {example.name or dict(example.shapes)!r}"
        unknown = sorted(set(example.shapes) - set(ports))
        missing = sorted(k for k, p in ports.items() if not p.optional and k not in example.shapes)
        if unknown or missing:
            raise ValueError(f"{where}: shapes name unknown inputs {unknown} or miss required ones {missing}")
        ints = {k for k in example.shapes if ports[k].kind == "int"}
        ints |= {k for k in example.ints if k in example.shapes and ports[k].kind == "any"}  # "any": drawn as ints
        if set(example.ints) != ints:
            raise ValueError(f"{where}: ints must give a range for exactly the int inputs {sorted(ints)}")
        bad = {k: d for k, d in example.domain.items() if d not in DOMAINS or k not in example.shapes or k in ints}
        if bad:
            raise ValueError(f"{where}: bad domains {bad}; float inputs take one of {sorted(DOMAINS)}")
        unknown = sorted((set(example.attrs) | set(example.sweep)) - set(primitive.attrs))
        if unknown:
            raise ValueError(f"{where}: unknown attributes {unknown}; {name!r} has {sorted(primitive.attrs)}")
        if example.nonfinite is not None and not set(example.nonfinite) <= set(example.shapes) - ints:
            raise ValueError(f"{where}: nonfinite must name float inputs the example gives, not {example.nonfinite}")
        if primitive.random != (example.statistic is not None):
            raise ValueError(f"{where}: random primitives, and only they, are checked by a statistic")


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], p: float, rtol: float) -> None:
    """`mask` is 0 with probability about p and 1/(1-p) elsewhere."""
    import numpy as np  # noqa: PLC0415 - only the conformance kit runs statistics

    assert mask.shape == shape, f"mask shape {mask.shape}, expected {shape}"
    kept = 1.0 / (1.0 - p)
    zero = mask == 0
    assert np.allclose(mask[~zero], kept, rtol=rtol, atol=0), f"kept elements must be 1/(1-p) = {kept}"
    bound = 5 * math.sqrt(p * (1 - p) / mask.size) + 1 / mask.size
    assert abs(zero.mean() - p) <= bound, f"{zero.mean():.4f} of the mask is zero; expected p = {p} ± {bound:.4f}"


def dropout_mask_statistics(sample: Sample) -> None:
    """dropout_mask: shaped like `like`, zero with probability p, 1/(1-p) elsewhere."""
    _check_mask(sample.outputs["output"], sample.inputs["like"].shape, sample.attrs["p"], sample.rtol)


def dropout_statistics(sample: Sample) -> None:
    """dropout: output = input * mask for a valid mask; the input's gradient is the output's seed times the mask."""
    import numpy as np  # noqa: PLC0415 - only the conformance kit runs statistics

    x, mask = sample.inputs["input"], sample.outputs["mask"]
    _check_mask(mask, x.shape, sample.attrs["p"], sample.rtol)
    np.testing.assert_allclose(sample.outputs["output"], x * mask, rtol=sample.rtol, atol=sample.atol)
    if sample.grads:
        want = sample.seeds["output"] * mask
        np.testing.assert_allclose(sample.grads["input"], want, rtol=sample.rtol, atol=sample.atol)
