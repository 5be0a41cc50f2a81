"""Every core-set primitive lowered by ggml, forward, against NumPy formulas in float64."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from scipy.special import erf

import mithril as ml
from mithril.models.base import KeySpec, Operator

RTOL = 1e-5
RNG = np.random.default_rng(0)


def run(op: Operator, **inputs: np.ndarray) -> np.ndarray:
    """Compile `op` for ggml with the inputs' shapes, evaluate it once, return its output."""
    shapes = {k: list(np.shape(v)) for k, v in inputs.items()}
    compiled = ml.compile(op, ml.GGMLBackend(), shapes=shapes, inference=True)
    return compiled.evaluate({}, inputs)["output"]


def close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    """Float32 result against a float64 reference: relative to the reference's largest value."""
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = max(float(np.nanmax(np.abs(want))) if want.size else 0.0, 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


SPECIAL = np.array([np.nan, np.inf, -np.inf, -2.5, -1.0, -0.0, 0.0, 0.3, 1.0, 7.0], np.float32)


# -- elementwise ----------------------------------------------------------------------------------
def test_scalar_is_a_0d_array() -> None:
    out = run(Operator("scalar", attrs={"value": -2.25}))
    assert out.shape == () and out.dtype == np.float32 and out == -2.25


UNARY = {
    "sign": lambda x: np.where(np.isnan(x), 0.0, np.sign(x)),  # torch.sign(NaN) is 0
    "sin": np.sin,
    "cos": np.cos,
    "relu": lambda x: np.where(np.isnan(x), np.nan, np.maximum(x, 0.0)),
    "erf": erf,
    "tanh": np.tanh,
    "abs": np.abs,
    "neg": np.negative,
}


@pytest.mark.parametrize("primitive", UNARY)
def test_unary_matches_numpy_and_propagates_nan(primitive: str) -> None:
    x = np.concatenate([SPECIAL, randn(50) * 3])
    if primitive in ("sin", "cos"):
        x = x[np.isfinite(x) | np.isnan(x)]
    want = UNARY[primitive](x.astype(np.float64))
    got = run(Operator(primitive), input=x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=2e-7 if primitive != "erf" else 0, atol=2e-7)


def test_erf_is_within_2e7_of_exact_everywhere() -> None:
    x = np.linspace(-6, 6, 400_001, dtype=np.float32)
    got = run(Operator("erf"), input=x)
    assert np.abs(got - erf(x.astype(np.float64))).max() < 2e-7


@pytest.mark.parametrize("primitive", ["greater", "equal"])
@pytest.mark.parametrize(("left", "right"), [((4, 3), (4, 3)), ((4, 1), (3,)), ((), (2, 3)), ((2, 1, 3), (4, 1))])
def test_comparison_is_float_zero_one_and_broadcasts(primitive: str, left: tuple, right: tuple) -> None:
    a = RNG.integers(-2, 3, left).astype(np.float32)
    c = RNG.integers(-2, 3, right).astype(np.float32)
    want = (np.greater if primitive == "greater" else np.equal)(a, c).astype(np.float64)
    np.testing.assert_array_equal(run(Operator(primitive), left=a, right=c), want)


@pytest.mark.parametrize("primitive", ["greater", "equal"])
def test_comparison_of_special_values(primitive: str) -> None:
    a, c = np.meshgrid(SPECIAL, SPECIAL)
    want = (np.greater if primitive == "greater" else np.equal)(a, c).astype(np.float64)
    np.testing.assert_array_equal(run(Operator(primitive), left=a, right=c), want)


@pytest.mark.parametrize(
    "shapes", [((5,), (5,), (5,)), ((3, 1), (2,), (3, 2)), ((), (2, 2), ()), ((2, 1, 3), (4, 1), (3,))]
)
def test_where_copies_values_exactly(shapes: tuple) -> None:
    cond = RNG.integers(0, 2, shapes[0]).astype(np.float32) * RNG.choice([1.0, -3.0, np.nan], shapes[0])
    left = RNG.choice(SPECIAL, shapes[1]).astype(np.float32)
    right = randn(*shapes[2])
    got = run(Operator("where"), condition=cond.astype(np.float32), left=left, right=right)
    np.testing.assert_array_equal(got, np.where(cond != 0, left, right))


# -- broadcasting forms ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("like", "axis", "keepdim"),
    [((3, 4), 1, False), ((3, 4), (0,), True), ((2, 3, 4), (0, 2), False), ((2, 3, 4), None, False), ((5,), -1, True)],
)
@pytest.mark.parametrize("scale", [False, True])
def test_expand_reduced(like: tuple, axis: Any, keepdim: bool, scale: bool) -> None:
    axes = tuple(range(len(like))) if axis is None else tuple(np.atleast_1d(axis) % len(like))
    reduced = np.sum(np.zeros(like), axis=axes, keepdims=keepdim).shape
    x, target = randn(*reduced), randn(*like)
    op = Operator("expand_reduced", attrs={"axis": axis, "keepdim": keepdim, "scale": scale})
    kept = np.reshape(x.astype(np.float64), [1 if i in axes else d for i, d in enumerate(like)])
    want = np.broadcast_to(kept, like) / (math.prod(like[i] for i in axes) if scale else 1)
    close(run(op, input=x, like=target), want)


@pytest.mark.parametrize(
    ("shape", "like"), [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((2, 3, 4), ()), ((5, 1, 2), (1, 1, 2))]
)
def test_sum_like_undoes_broadcasting(shape: tuple, like: tuple) -> None:
    x = randn(*shape)
    lead = len(shape) - len(like)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(like) if d == 1 and shape[lead + i] != 1)
    want = np.sum(x.astype(np.float64), axis=axes, keepdims=True).reshape(like)
    close(run(Operator("sum_like"), input=x, like=randn(*like)), want)


@pytest.mark.parametrize(("shape", "like"), [((4,), (3, 4)), ((3, 1), (2, 3, 5)), ((), (2, 2))])
def test_expand_like(shape: tuple, like: tuple) -> None:
    x = randn(*shape)
    np.testing.assert_array_equal(run(Operator("expand_like"), input=x, like=randn(*like)), np.broadcast_to(x, like))


def test_reshape_like() -> None:
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(run(Operator("reshape_like"), input=x, like=randn(6, 4)), x.reshape(6, 4))


# -- windows: references ---------------------------------------------------------------------------
def conv_ref(x: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> tuple:
    """torch conv forward, and functions giving its input and weight gradients, in float64."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, *size = x.shape
    o, cg, *kernel = w.shape
    out = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]
    xp = np.pad(x, [(0, 0), (0, 0), *[(p, p) for p in padding]])
    wg = w.reshape(groups, o // groups, cg, -1)

    def window(k: tuple) -> tuple:
        return tuple(slice(i * d, i * d + st * (m - 1) + 1, st) for i, d, st, m in zip(k, dilation, stride, out))

    offsets = list(itertools.product(*map(range, kernel)))
    y = np.zeros((n, groups, o // groups, *out))
    for j, k in enumerate(offsets):
        xs = xp[(slice(None), slice(None), *window(k))].reshape(n, groups, cg, *out)
        y += np.einsum("ngc...,goc->ngo...", xs, wg[..., j])

    def input_grad(g: np.ndarray) -> np.ndarray:
        gg = g.astype(np.float64).reshape(n, groups, o // groups, *out)
        dxp = np.zeros_like(xp)
        for j, k in enumerate(offsets):
            part = np.einsum("ngo...,goc->ngc...", gg, wg[..., j]).reshape(n, c, *out)
            dxp[(slice(None), slice(None), *window(k))] += part
        return dxp[(slice(None), slice(None), *[slice(p, p + s) for p, s in zip(padding, size)])]

    def weight_grad(g: np.ndarray) -> np.ndarray:
        gg = g.astype(np.float64).reshape(n, groups, o // groups, *out)
        dw = np.zeros_like(wg)
        for j, k in enumerate(offsets):
            xs = xp[(slice(None), slice(None), *window(k))].reshape(n, groups, cg, *out)
            dw[..., j] = np.einsum(
                "ngop,ngcp->goc", gg.reshape(n, groups, o // groups, -1), xs.reshape(n, groups, cg, -1)
            )
        return dw.reshape(w.shape)

    return y.reshape(n, o, *out), input_grad, weight_grad


CONVS = [
    # (input shape, weight shape, stride, padding, dilation, groups)
    ((2, 3, 9), (4, 3, 3), (1,), (0,), (1,), 1),
    ((2, 4, 11), (6, 2, 3), (2,), (1,), (2,), 2),
    ((1, 2, 8), (3, 2, 1), (3,), (0,), (1,), 1),
    ((2, 3, 6, 7), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 3, 7, 6), (5, 3, 3, 2), (2, 1), (1, 0), (1, 2), 1),
    ((1, 4, 8, 9), (6, 2, 3, 3), (2, 3), (1, 2), (2, 1), 2),
    ((2, 6, 5, 5), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6),
]


def _conv_attrs(case: tuple) -> dict[str, Any]:
    _, w, stride, padding, dilation, groups = case
    return {"kernel_size": w[2:], "stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


@pytest.mark.parametrize("case", CONVS, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(case: tuple, bias: bool) -> None:
    x, w = randn(*case[0]), randn(*case[1])
    want, _, _ = conv_ref(x, w, *case[2:])
    inputs = {"input": x, "weight": w}
    if bias:
        inputs["bias"] = randn(w.shape[0])
        want = want + inputs["bias"].reshape(-1, *[1] * (x.ndim - 2))
    op = Operator("conv", {k: KeySpec() for k in inputs}, attrs=_conv_attrs(case))
    close(run(op, **inputs), want)


@pytest.mark.parametrize("case", CONVS, ids=str)
def test_conv_input_and_weight_grad(case: tuple) -> None:
    x, w = randn(*case[0]), randn(*case[1])
    y, input_grad, weight_grad = conv_ref(x, w, *case[2:])
    g = randn(*y.shape)
    attrs = {k: v for k, v in _conv_attrs(case).items() if k != "kernel_size"}
    close(run(Operator("conv_input_grad", attrs=attrs), input=g, weight=w, like=x), input_grad(g))
    close(run(Operator("conv_weight_grad", attrs=attrs), input=g, data=x, like=w), weight_grad(g))


def pool_windows(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple, ceil: bool, fill: float):
    """Windows [..., *out, K] of the last n axes (padding and the ceil_mode tail hold `fill`), and their
    positions in the input (-1 for padding)."""
    n = len(kernel)
    size = x.shape[x.ndim - n :]
    out, after = [], []
    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation):
        room = s + 2 * p - d * (k - 1) - 1
        o = (-(-room // st) if ceil else room // st) + 1
        if ceil and (o - 1) * st >= s + p:
            o -= 1
        out.append(o)
        after.append(max((o - 1) * st + d * (k - 1) + 1 - s - p, p))
    lead = x.shape[: x.ndim - n]
    xp = np.pad(x.astype(np.float64), [(0, 0)] * len(lead) + list(zip(padding, after)), constant_values=fill)
    pos = np.pad(np.arange(math.prod(size)).reshape(size), list(zip(padding, after)), constant_values=-1)
    cols, where = [], []
    for k in itertools.product(*map(range, kernel)):
        sl = tuple(slice(i * d, i * d + st * (m - 1) + 1, st) for i, d, st, m in zip(k, dilation, stride, out))
        cols.append(xp[(Ellipsis, *sl)])
        where.append(pos[sl])
    return np.stack(cols, -1), np.stack(where, -1), tuple(out)


POOLS = [
    # (input shape, kernel, stride, padding, dilation, ceil_mode)
    ((2, 3, 10), (3,), (2,), (1,), (1,), False),
    ((3, 9), (2,), (2,), (0,), (1,), True),
    ((2, 11), (3,), (2,), (1,), (2,), True),
    ((2, 3, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 7, 8), (3, 2), (1, 2), (1, 1), (2, 1), False),
    ((1, 2, 9, 9), (3, 3), (3, 2), (1, 0), (1, 2), True),
    ((5, 5), (3, 3), (1, 1), (1, 1), (1, 1), False),
]


@pytest.mark.parametrize("case", POOLS, ids=str)
def test_max_pool(case: tuple) -> None:
    shape, kernel, stride, padding, dilation, ceil = case
    x = randn(*shape)
    cols, _, _ = pool_windows(x, kernel, stride, padding, dilation, ceil, -np.inf)
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil}
    np.testing.assert_array_equal(run(Operator("max_pool", attrs=attrs), input=x), cols.max(-1))


@pytest.mark.parametrize("case", POOLS, ids=str)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_grad_goes_to_the_first_maximum(case: tuple, ties: bool) -> None:
    shape, kernel, stride, padding, dilation, ceil = case
    x = RNG.integers(0, 3, shape).astype(np.float32) if ties else randn(*shape)
    cols, where, out = pool_windows(x, kernel, stride, padding, dilation, ceil, -np.inf)
    g = randn(*shape[: len(shape) - len(kernel)], *out)
    first = np.take_along_axis(np.broadcast_to(where, cols.shape), cols.argmax(-1)[..., None], -1)[..., 0]
    lead = math.prod(shape[: len(shape) - len(kernel)])
    want = np.zeros((lead, math.prod(shape[len(shape) - len(kernel) :])))
    for i in range(lead):
        np.add.at(want[i], first.reshape(lead, -1)[i], g.reshape(lead, -1)[i])
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil}
    close(run(Operator("max_pool_grad", attrs=attrs), input=g, like=x), want.reshape(shape))


AVG_POOLS = [
    # (input shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    ((2, 3, 10), (3,), (2,), (1,), False, True, None),
    ((2, 3, 10), (3,), (2,), (1,), True, False, None),
    ((3, 9), (4,), (3,), (2,), True, True, None),
    ((2, 3, 6, 7), (2, 2), (2, 2), (0, 0), False, True, None),
    ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), True, False, None),
    ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), True, True, None),
    ((2, 7, 8), (3, 2), (1, 2), (1, 1), False, False, None),
    ((2, 7, 8), (3, 2), (2, 2), (1, 0), False, True, 5),
    ((5, 5), (2, 3), (2, 1), (1, 1), True, True, 3),
]


def avg_ref(x: np.ndarray, case: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(output, windows' positions, divisors, output spatial shape) of torch's avg_pool."""
    shape, kernel, stride, padding, ceil, include, override = case
    n, ones = len(kernel), np.ones(shape[len(shape) - len(kernel) :])
    cols, where, out = pool_windows(x, kernel, stride, padding, (1,) * n, ceil, 0.0)
    if override is not None:
        divisor = np.full(out, float(override))
    elif include:  # torch counts padding, but not the ceil_mode tail past it
        grown = np.pad(ones, [(p, p) for p in padding], constant_values=1.0)
        divisor = pool_windows(grown, kernel, stride, (0,) * n, (1,) * n, ceil, 0.0)[0].sum(-1)[
            tuple(slice(0, o) for o in out)
        ]
    else:
        divisor = pool_windows(ones, kernel, stride, padding, (1,) * n, ceil, 0.0)[0].sum(-1)
    return cols.sum(-1) / divisor, where, divisor, out


def _avg_attrs(case: tuple) -> dict[str, Any]:
    _, kernel, stride, padding, ceil, include, override = case
    return {
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "ceil_mode": ceil,
        "count_include_pad": include,
        "divisor_override": override,
    }


@pytest.mark.parametrize("case", AVG_POOLS, ids=str)
def test_avg_pool(case: tuple) -> None:
    x = randn(*case[0])
    close(run(Operator("avg_pool", attrs=_avg_attrs(case)), input=x), avg_ref(x, case)[0])


@pytest.mark.parametrize("case", AVG_POOLS, ids=str)
def test_avg_pool_grad(case: tuple) -> None:
    shape, kernel = case[0], case[1]
    x = randn(*shape)
    _, where, divisor, out = avg_ref(x, case)
    lead = math.prod(shape[: len(shape) - len(kernel)])
    g = randn(*shape[: len(shape) - len(kernel)], *out)
    share = (g.reshape(lead, *out).astype(np.float64) / divisor)[..., None] * np.ones(where.shape)
    want = np.zeros((lead, math.prod(shape[len(shape) - len(kernel) :]) + 1))
    for i in range(lead):
        np.add.at(want[i], where.reshape(-1), share[i].reshape(-1))
    close(run(Operator("avg_pool_grad", attrs=_avg_attrs(case)), input=g, like=x), want[:, :-1].reshape(shape))


@pytest.mark.parametrize(
    "primitive",
    ["conv", "conv_input_grad", "conv_weight_grad", "max_pool", "max_pool_grad", "avg_pool", "avg_pool_grad"],
)
def test_3d_windows_are_refused_at_compile_time(primitive: str) -> None:
    three = {"stride": (1, 1, 1), "padding": (0, 0, 0)}
    if "pool" in primitive:
        three["kernel_size"] = (2, 2, 2)
    if "max" in primitive or "conv" in primitive:
        three["dilation"] = (1, 1, 1)
    with pytest.raises(ml.UnsupportedError, match=f"backend 'ggml'.*{primitive}.*1-d and 2-d windows"):
        ml.compile(Operator(primitive, attrs=three), ml.GGMLBackend(), inference=True)


# -- indices and randomness ----------------------------------------------------------------------
@pytest.mark.parametrize("index_shape", [(7,), (2, 5), (3, 2, 2)])
def test_embedding_grad_adds_rows_at_indices(index_shape: tuple) -> None:
    vocab, dim = 6, 4
    idx = RNG.integers(0, vocab, index_shape)
    g = randn(*index_shape, dim)
    want = np.zeros((vocab, dim))
    np.add.at(want, idx.reshape(-1), g.reshape(-1, dim).astype(np.float64))
    op = Operator("embedding_grad", {"input": KeySpec(), "indices": KeySpec(kind="int"), "like": KeySpec()})
    close(run(op, input=g, indices=idx, like=randn(vocab, dim)), want)


@pytest.mark.parametrize("bad", [-1, 6])
def test_embedding_grad_refuses_indices_out_of_range(bad: int) -> None:
    op = Operator("embedding_grad", {"input": KeySpec(), "indices": KeySpec(kind="int"), "like": KeySpec()})
    with pytest.raises(ml.IndexRangeError, match=rf"'indices' holds index {bad}, outside the valid range \[0, 6\)"):
        run(op, input=randn(3, 4), indices=np.array([0, bad, 1]), like=randn(6, 4))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_mask(p: float) -> None:
    mask = run(Operator("dropout_mask", attrs={"p": p}), like=randn(200, 50))
    assert mask.shape == (200, 50) and mask.dtype == np.float32
    if p == 1.0:
        assert not mask.any()
    else:
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - p))}
        assert abs((mask == 0).mean() - p) < 0.03


# -- gradients from the core's joint graph ---------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: ml.models.Softmax(dim=0), [5, 3]),
        (lambda: ml.models.Softmax(dim=1), [2, 4, 3]),
        (lambda: ml.models.Linear(6), [2, 3, 4, 5]),
        (lambda: ml.models.LogSoftmax(dim=0), [4, 2]),
    ],
    ids=["softmax_dim0", "softmax_dim1", "linear_rank4", "log_softmax_dim0"],
)
def test_gradients_match_the_numpy_backend(build: Any, shape: list[int]) -> None:
    """Regressions: ggml's own backward got Softmax(dim=0) wrong and aborted on a rank-4 Linear."""
    compiled = ml.compile(build(), ml.GGMLBackend(), shapes={"input": shape}, trainable_keys=["input"])
    reference = ml.compile(build(), ml.NumpyBackend(), shapes={"input": shape}, trainable_keys=["input"])
    params = {**compiled.randomize_params(seed=3), "input": randn(*shape)}
    out = reference.evaluate(params, {})["output"]
    seeds = {"output": randn(*out.shape)}
    (got_out, got), (_, want) = compiled.evaluate(params, {}, seeds), reference.evaluate(params, {}, seeds)
    close(got_out["output"], out, 1e-5)
    assert list(got) == list(want)
    for key in want:
        close(got[key], want[key], 1e-4)
