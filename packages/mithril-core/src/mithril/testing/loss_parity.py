"""Loss layers against torch.nn.functional: every form torch accepts, at every rank, and extreme logits.

`LOSS_CASES` are checked by each backend's tests with `check_loss_parity`: outputs and the
gradient of the input (and of a float target) must match torch computed in the backend's dtype,
within 1e-9 in float64; where torch is finite on extreme logits (±3e38, ±inf), so is the backend.
torch is imported only when a check runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import compiler
from ..backend import Backend
from ..dtypes import float64
from ..models import CrossEntropyLoss, MSELoss
from ..models.base import BaseModel

__all__ = ["LossCase", "LOSS_CASES", "EXTREME_CASES", "check_loss_parity"]

WEIGHT = (1.0, 2.0, 0.5, 1.5)


@dataclass
class LossCase:
    """A loss layer, its torch.nn.functional twin, and its input and target (float64 NumPy)."""

    name: str
    build: Callable[[], BaseModel]
    torch_loss: Callable[[Any, Any, Any], Any]  # (torch.nn.functional, input, target) -> loss
    input: np.ndarray
    target: np.ndarray
    kwargs: dict[str, Any] = field(default_factory=dict)  # the layer's and torch's arguments
    target_grad: bool = False  # the target is float and its gradient is checked too


def _ce(name: str, logits: np.ndarray, target: np.ndarray, **kwargs: Any) -> LossCase:
    weight = kwargs.get("weight")

    def torch_loss(F: Any, x: Any, t: Any) -> Any:  # noqa: N803 - torch's conventional name
        import torch  # noqa: PLC0415 - torch is imported only when a check runs

        args = {k: v for k, v in kwargs.items() if k != "weight"}
        w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
        return F.cross_entropy(x, t, weight=w, **args)

    return LossCase(name, lambda: CrossEntropyLoss(**kwargs), torch_loss, logits, target, kwargs)


def _mse(name: str, shape: tuple[int, ...], reduction: str, rng: np.random.Generator) -> LossCase:
    return LossCase(
        name,
        lambda: MSELoss(reduction=reduction),
        lambda F, x, t: F.mse_loss(x, t, reduction=reduction),  # noqa: N803
        rng.standard_normal(shape),
        rng.standard_normal(shape),
        {"reduction": reduction},
        target_grad=True,
    )


def _cases() -> list[LossCase]:
    rng = np.random.default_rng(13)
    cases: list[LossCase] = []
    for shape in [(4,), (3, 4), (3, 4, 2), (2, 4, 2, 3)]:
        reduced = shape[:1] + shape[2:] if len(shape) > 1 else ()
        rank = f"rank{len(shape)}"
        for reduction in ("mean", "sum", "none"):
            for options, label in (
                ({}, "plain"),
                ({"weight": WEIGHT, "label_smoothing": 0.1, "ignore_index": 1}, "weighted_smoothed_ignored"),
            ):
                kwargs = {"reduction": reduction, **options}
                indices = rng.integers(0, 4, reduced)
                cases.append(_ce(f"ce_{rank}_{label}_{reduction}", rng.standard_normal(shape), indices, **kwargs))
                probs = rng.dirichlet(np.ones(4), reduced).astype(np.float64)
                probs = np.moveaxis(probs, -1, 1) if len(shape) > 1 else probs
                kwargs.pop("ignore_index", None)
                cases.append(_ce(f"ce_{rank}_{label}_probs_{reduction}", rng.standard_normal(shape), probs, **kwargs))
        for reduction in ("mean", "sum", "none"):
            cases.append(_mse(f"mse_{rank}_{reduction}", shape, reduction, rng))
    cases.append(_mse("mse_rank0_mean", (), "mean", rng))
    return cases


def _extreme_cases(big: float) -> list[LossCase]:
    """Logits at ±`big` (the dtype's extreme) and ±inf where torch's loss is finite."""
    inf = np.inf
    rows = np.array([[big, -big, 0.0], [1.0, big, big]])
    infinite = np.array([[-inf, 0.0, 1.0], [2.0, -inf, -inf], [-inf, 5.0, -inf]])
    return [
        _ce("ce_extreme", rows, np.array([0, 1])),
        _ce("ce_extreme_weighted_none", rows, np.array([0, 1]), weight=(1.0, 2.0, 0.5), reduction="none"),
        _ce("ce_extreme_ignored", rows, np.array([-100, 2])),
        _ce("ce_infinite", infinite, np.array([2, 0, 1])),
        _ce("ce_infinite_ignored_sum", infinite, np.array([2, 0, 0]), ignore_index=0, reduction="sum"),
        _ce("ce_infinite_rank1", np.array([-inf, 0.5, 2.0]), np.array(2)),
        _ce("ce_extreme_probs", rows, np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]) + 0.0 * rows),
    ]


LOSS_CASES = _cases()
EXTREME_CASES = {"float32": _extreme_cases(3e38), "float64": _extreme_cases(1.7e308)}


def check_loss_parity(case: LossCase, backend: Backend, training: bool = True) -> None:
    """Compile `case` on `backend` (with gradients of the input when training) and compare with torch."""
    import torch  # noqa: PLC0415 - torch is imported only when a check runs
    import torch.nn.functional as F  # noqa: N812, PLC0415

    dtype = np.float64 if backend.dtype is float64 else np.float32
    torch_dtype = torch.float64 if dtype is np.float64 else torch.float32
    float_target = case.target.dtype.kind == "f"
    x = case.input.astype(dtype)
    t = case.target.astype(dtype) if float_target else case.target.astype(np.int64)
    trained = ["input", "target"] if training and case.target_grad else ["input"] if training else []
    compiled = compiler.compile(
        case.build(),
        backend,
        shapes={"input": list(x.shape), "target": list(t.shape)},
        trainable_keys=trained,
        inference=not training,
    )
    arrays = {"input": backend.array(x), "target": backend.array(t)}
    params = {k: v for k, v in arrays.items() if k in trained}
    inputs = {k: v for k, v in arrays.items() if k not in trained}
    xt = torch.tensor(x, dtype=torch_dtype, requires_grad=training)
    tt = torch.tensor(t, requires_grad=training and case.target_grad)
    expected = case.torch_loss(F, xt, tt)
    rtol, atol = (1e-9, 1e-12) if dtype is np.float64 else (2e-5, 1e-6)
    if training:
        seed = np.ones(tuple(expected.shape), dtype)
        outputs, grads = compiled.evaluate(params, inputs, {"output": backend.array(seed)})
        expected.backward(torch.tensor(seed))
        expected_grads = {"input": xt.grad, "target": tt.grad}
        for key in trained:
            got = np.asarray(backend.to_numpy(grads[key]), np.float64)
            grad = expected_grads[key]
            assert grad is not None, f"{case.name}: torch gave no gradient of {key}"
            want = grad.detach().numpy().astype(np.float64)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{case.name}: gradient of {key}")
    else:
        outputs = compiled.evaluate(params, inputs)
    got = np.asarray(backend.to_numpy(outputs["output"]), np.float64)
    want = expected.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{case.name}: output")
