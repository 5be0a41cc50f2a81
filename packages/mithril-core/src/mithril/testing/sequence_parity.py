"""The sequence layers (mithril.models.sequence) against the torch functions they follow.

Each `SequenceCase` builds a layer, draws its inputs and names the torch expression it must equal;
`check_sequence_case` compiles it on a backend, trains every float input, and compares outputs and
input gradients for random output gradients with torch's autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mithril as ml
from mithril.models import Chunk, Concat, Cumsum, Gather, Index, Split, Tril, Triu, Where
from mithril.models.base import BaseModel

__all__ = ["SequenceCase", "SEQUENCE_CASES", "check_sequence_case"]


@dataclass(frozen=True)
class SequenceCase:
    """A layer, its input shapes (int inputs with their range [0, n)), and torch's function of the inputs."""

    name: str
    build: Callable[[], BaseModel]
    shapes: Mapping[str, tuple[int, ...]]
    torch_fn: Callable[..., Any]  # inputs by key -> a tensor or a tuple of tensors (output0, output1, ...)
    ints: Mapping[str, int] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("output",)


def _pieces(n: int) -> tuple[str, ...]:
    return tuple(f"output{i}" for i in range(n))


SEQUENCE_CASES: list[SequenceCase] = [
    SequenceCase("index_last", lambda: Index[:, -1], {"input": (3, 4, 5)}, lambda input: input[:, -1]),
    SequenceCase("index_ellipsis", lambda: Index[..., :3], {"input": (2, 3, 5)}, lambda input: input[..., :3]),
    SequenceCase(
        "index_steps_none_reverse",
        lambda: Index("1::2, None, ::-1"),
        {"input": (3, 4, 5)},
        lambda input: input[1::2, None].flip(2),
    ),
    SequenceCase("index_int_negative", lambda: Index[-2, 1:3], {"input": (3, 4)}, lambda input: input[-2, 1:3]),
    SequenceCase("index_clipped", lambda: Index[-10:10, ::3], {"input": (3, 7)}, lambda input: input[-10:10, ::3]),
    SequenceCase(
        "concat3",
        lambda: Concat(3, dim=1),
        {"input0": (2, 3), "input1": (2, 1), "input2": (2, 4)},
        lambda input0, input1, input2: torch_cat((input0, input1, input2), 1),
    ),
    SequenceCase(
        "concat2_negative_dim",
        lambda: Concat(2, dim=-1),
        {"input0": (2, 3, 2), "input1": (2, 3, 3)},
        lambda input0, input1: torch_cat((input0, input1), -1),
    ),
    SequenceCase(
        "split_sections",
        lambda: Split([1, 3], dim=1),
        {"input": (2, 4, 3)},
        lambda input: input.split([1, 3], 1),
        outputs=_pieces(2),
    ),
    SequenceCase(
        "split_size",
        lambda: Split(2, dim=-1, num_outputs=3),
        {"input": (2, 5)},
        lambda input: input.split(2, -1),
        outputs=_pieces(3),
    ),
    SequenceCase(
        "chunk", lambda: Chunk(3, dim=0), {"input": (7, 2)}, lambda input: input.chunk(3, 0), outputs=_pieces(3)
    ),
    SequenceCase(
        "gather",
        lambda: Gather(1),
        {"input": (3, 4), "index": (3, 6)},
        lambda input, index: input.gather(1, index),
        ints={"index": 4},
    ),
    SequenceCase(
        "gather_smaller_index",
        lambda: Gather(0),
        {"input": (5, 4), "index": (2, 3)},
        lambda input, index: input.gather(0, index),
        ints={"index": 5},
    ),
    SequenceCase(
        "where",
        lambda: Where(),
        {"condition": (3, 4), "input": (3, 4), "other": (4,)},
        lambda condition, input, other: torch_where(condition != 0, input, other),
        ints={"condition": 2},
    ),
    SequenceCase("tril", lambda: Tril(), {"input": (2, 4, 5)}, lambda input: input.tril()),
    SequenceCase("tril_diagonal", lambda: Tril(diagonal=1), {"input": (4, 3)}, lambda input: input.tril(1)),
    SequenceCase("triu_negative", lambda: Triu(diagonal=-1), {"input": (3, 5)}, lambda input: input.triu(-1)),
    SequenceCase("cumsum", lambda: Cumsum(1), {"input": (3, 4, 2)}, lambda input: input.cumsum(1)),
    SequenceCase("cumsum_negative_dim", lambda: Cumsum(-1), {"input": (3, 5)}, lambda input: input.cumsum(-1)),
]


def torch_cat(tensors: tuple[Any, ...], dim: int) -> Any:
    import torch  # noqa: PLC0415 - torch is a test-only dependency

    return torch.cat(tensors, dim)


def torch_where(condition: Any, input: Any, other: Any) -> Any:  # noqa: A002 - torch's argument name
    import torch  # noqa: PLC0415

    return torch.where(condition, input, other)


def check_sequence_case(case: SequenceCase, backend: ml.Backend, rtol: float = 1e-9, seed: int = 0) -> None:
    """Outputs and input gradients of `case` on `backend` equal torch's (float64 autograd)."""
    import torch  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for key, shape in case.shapes.items():
        arrays[key] = rng.integers(0, case.ints[key], shape) if key in case.ints else rng.standard_normal(shape)
    floats = [k for k in case.shapes if k not in case.ints]
    model = case.build()
    compiled = ml.compile(
        model,
        backend,
        shapes={k: list(v) for k, v in case.shapes.items()},
        outputs=list(case.outputs),
        trainable_keys=floats,
    )
    dtype = np.float32 if backend.dtype == ml.float32 else np.float64
    params = {k: backend.array(arrays[k].astype(dtype)) for k in floats}
    data = {k: backend.array(arrays[k]) for k in case.ints}

    tensors = {k: torch.tensor(v, requires_grad=k not in case.ints) for k, v in arrays.items()}
    got = case.torch_fn(**tensors)
    want = dict(zip(case.outputs, got if isinstance(got, tuple) else (got,)))
    seeds = {k: rng.standard_normal(tuple(v.shape)) for k, v in want.items()}
    total = sum((v * torch.tensor(seeds[k])).sum() for k, v in want.items())
    total.backward()

    outputs, grads = compiled.evaluate(params, data, {k: backend.array(v.astype(dtype)) for k, v in seeds.items()})
    for key, value in want.items():
        np.testing.assert_allclose(
            backend.to_numpy(outputs[key]), value.detach().numpy(), rtol=rtol, atol=rtol, err_msg=f"{case.name} {key}"
        )
    for key in floats:
        expected = tensors[key].grad
        assert expected is not None, f"{case.name}: torch gives no gradient for {key!r}"
        np.testing.assert_allclose(
            backend.to_numpy(grads[key]), expected.numpy(), rtol=rtol, atol=rtol, err_msg=f"{case.name} grad {key}"
        )
