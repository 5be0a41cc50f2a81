"""ml.optim without a framework: hyper-parameter checks, state layout, purity, hand-computed steps, schedules, clipping.

The numbers equal to torch.optim are checked by every backend's *torch* tests (mithril.testing.optim_parity).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.optim import SGD, Adam, AdamW, NamespaceForeach, RMSprop, schedules

OPS = NamespaceForeach(np)


def _problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    params = {"linear_0.weight": rng.standard_normal((3, 2)), "linear_0.bias": rng.standard_normal(3)}
    return params, {key: rng.standard_normal(value.shape) for key, value in params.items()}


ALL_OPTIONS = [
    SGD(lr=0.1),
    SGD(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    SGD(lr=0.1, momentum=0.9, nesterov=True),
    Adam(),
    Adam(weight_decay=0.1, amsgrad=True),
    AdamW(),
    AdamW(amsgrad=True),
    RMSprop(),
    RMSprop(momentum=0.9, centered=True, weight_decay=0.1),
]


def test_ml_optim_is_reachable_from_mithril() -> None:
    assert ml.optim.Adam is Adam and "optim" in ml.__all__
    assert isinstance(ml.optim.foreach_ops(ml.backend("numpy")), NamespaceForeach)


def test_defaults_are_torch_optims() -> None:
    assert SGD().hyperparameters() == {"lr": 1e-3, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False}
    assert Adam().hyperparameters() == {
        "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0, "amsgrad": False
    }  # fmt: skip
    assert AdamW().weight_decay == 1e-2 and AdamW().betas == (0.9, 0.999)
    assert RMSprop().hyperparameters() == {
        "lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0, "momentum": 0, "centered": False
    }  # fmt: skip
    assert Adam(lr=0.1).lr == 0.1


@pytest.mark.parametrize("optimizer", ALL_OPTIONS, ids=repr)
def test_hyperparameters_are_json_and_rebuild_the_optimizer(optimizer: ml.optim.Optimizer) -> None:
    loaded = json.loads(json.dumps(optimizer.hyperparameters()))
    assert type(optimizer)(**loaded) == optimizer


BAD_HYPERPARAMETERS: list[tuple[type[Any], dict[str, Any], str]] = [
    (SGD, {"lr": -0.1}, "ml.optim.SGD: lr must be >= 0, got -0.1"),
    (SGD, {"lr": float("nan")}, "ml.optim.SGD: lr must be >= 0, got nan"),
    (SGD, {"momentum": -0.5}, "ml.optim.SGD: momentum must be >= 0, got -0.5"),
    (SGD, {"dampening": 1.5}, "ml.optim.SGD: dampening must be in [0, 1], got 1.5"),
    (SGD, {"weight_decay": -1e-4}, "ml.optim.SGD: weight_decay must be >= 0, got -0.0001"),
    (SGD, {"nesterov": True}, "ml.optim.SGD: nesterov=True needs momentum > 0 and dampening == 0, got momentum=0.0"),
    (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov=True needs momentum > 0 and dampening == 0"),
    (Adam, {"lr": -1e-3}, "ml.optim.Adam: lr must be >= 0, got -0.001"),
    (Adam, {"betas": (1.0, 0.999)}, "ml.optim.Adam: betas[0] must be in [0, 1), got 1.0"),
    (Adam, {"betas": (0.9, -0.1)}, "ml.optim.Adam: betas[1] must be in [0, 1), got -0.1"),
    (Adam, {"eps": -1e-8}, "ml.optim.Adam: eps must be >= 0, got -1e-08"),
    (Adam, {"weight_decay": -0.1}, "ml.optim.Adam: weight_decay must be >= 0, got -0.1"),
    (AdamW, {"betas": (0.9, 1.5)}, "ml.optim.AdamW: betas[1] must be in [0, 1), got 1.5"),
    (AdamW, {"lr": float("inf")}, "ml.optim.AdamW: lr must be >= 0, got inf"),
    (RMSprop, {"lr": -0.01}, "ml.optim.RMSprop: lr must be >= 0, got -0.01"),
    (RMSprop, {"alpha": 1.01}, "ml.optim.RMSprop: alpha must be in [0, 1], got 1.01"),
    (RMSprop, {"eps": -1.0}, "ml.optim.RMSprop: eps must be >= 0, got -1.0"),
    (RMSprop, {"momentum": -0.9}, "ml.optim.RMSprop: momentum must be >= 0, got -0.9"),
    (RMSprop, {"weight_decay": -0.9}, "ml.optim.RMSprop: weight_decay must be >= 0, got -0.9"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_HYPERPARAMETERS)
def test_out_of_range_hyperparameters_are_refused_at_construction(
    cls: type[Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SGD(lr="0.1"), "ml.optim.SGD: lr must be a real number, got '0.1' (str)"),
        (lambda: SGD(lr=True), "ml.optim.SGD: lr must be a real number, got True (bool)"),
        (lambda: SGD(momentum=0.9, nesterov=1), "ml.optim.SGD: nesterov must be True or False, got 1 (int)"),
        (lambda: Adam(betas=0.9), "ml.optim.Adam: betas must be a pair of numbers such as (0.9, 0.999), got 0.9"),
        (lambda: Adam(amsgrad="yes"), "ml.optim.Adam: amsgrad must be True or False"),
        (lambda: RMSprop(centered=None), "ml.optim.RMSprop: centered must be True or False"),
    ],
)
def test_hyperparameters_of_the_wrong_type_are_refused(make: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    ("optimizer", "slots"),
    [
        (SGD(lr=0.1), []),
        (SGD(lr=0.1, momentum=0.9), ["momentum_buffer"]),
        (Adam(), ["exp_avg", "exp_avg_sq"]),
        (AdamW(amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
        (RMSprop(), ["square_avg"]),
        (RMSprop(momentum=0.9, centered=True), ["square_avg", "grad_avg", "momentum_buffer"]),
    ],
    ids=repr,
)
def test_state_is_flat_zeros_keyed_slot_slash_param(optimizer: ml.optim.Optimizer, slots: list[str]) -> None:
    params, _ = _problem()
    state = optimizer.init(params, OPS)
    assert list(state) == [f"{slot}/{key}" for slot in slots for key in params]
    for name, value in state.items():
        key = name.split("/", 1)[1]
        assert value.shape == params[key].shape and value.dtype == params[key].dtype and not value.any()
        assert not any(
            np.shares_memory(value, other) for other in [*params.values(), *state.values()] if other is not value
        )


@pytest.mark.parametrize("optimizer", ALL_OPTIONS, ids=repr)
def test_update_returns_new_dicts_and_never_modifies_its_inputs(optimizer: ml.optim.Optimizer) -> None:
    params, grads = _problem()
    state = optimizer.init(params, OPS)
    for step in (1, 2):
        copies = [{k: v.copy() for k, v in d.items()} for d in (params, grads, state)]
        new_params, new_state = optimizer.update(params, grads, state, step=step, lr=0.1, ops=OPS)
        for given, copy in zip((params, grads, state), copies):
            assert list(given) == list(copy) and all(np.array_equal(given[k], copy[k]) for k in copy)
        assert list(new_params) == list(params) and list(new_state) == list(state)
        inputs = [*params.values(), *grads.values(), *state.values()]
        assert not any(np.shares_memory(out, x) for out in [*new_params.values(), *new_state.values()] for x in inputs)
        assert not all(np.array_equal(new_params[k], params[k]) for k in params)
        params, state = new_params, new_state


@pytest.mark.parametrize("optimizer", ALL_OPTIONS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_joined_lists_update_bit_for_bit_like_one_array_at_a_time(optimizer: ml.optim.Optimizer, dtype: Any) -> None:
    joined = NamespaceForeach(np, joins=True)  # the NumPy backend's: one flat array per list
    params, grads = _problem()
    params = {k: v.astype(dtype) for k, v in params.items()}
    state = expected_state = optimizer.init(params, OPS)
    expected = params
    for step in (1, 2, 3):
        given = [{k: v.copy() for k, v in d.items()} for d in (params, state)]
        g = {k: (v * step).astype(dtype) for k, v in grads.items()}
        params, state = optimizer.update(params, g, state, step=step, lr=np.asarray(0.1), ops=joined)
        expected, expected_state = optimizer.update(expected, g, expected_state, step=step, lr=np.asarray(0.1), ops=OPS)
        for got, want in ((params, expected), (state, expected_state)):
            assert list(got) == list(want)
            assert all(got[k].shape == want[k].shape and got[k].dtype == want[k].dtype for k in want)
            assert all(np.array_equal(got[k], want[k]) for k in want)
        assert not any(np.shares_memory(out, x) for out in params.values() for d in given for x in d.values())


@pytest.mark.parametrize("optimizer", ALL_OPTIONS, ids=repr)
def test_joined_rules_run_as_generated_code_with_the_eager_numbers(optimizer: ml.optim.Optimizer) -> None:
    """Joined lists run the rule as straight-line code (optim/traced.py), bit for bit the eager rule's numbers
    whatever type the step and lr have at runtime; SGD's momentum tests `step == 1`, so it runs eagerly."""
    joined = NamespaceForeach(np, joins=True)
    params, grads = _problem()
    params = {k: v.astype(np.float32) for k, v in params.items()}
    state = expected_state = optimizer.init(params, OPS)
    expected = params
    for step, lr in [(1, None), (2, 0.05), (np.int64(3), np.asarray(0.02)), (4, np.float64(0.01)), (5, 0.2)]:
        g = {k: (v * float(step)).astype(np.float32) for k, v in grads.items()}
        params, state = optimizer.update(params, g, state, step=step, lr=lr, ops=joined)
        expected, expected_state = optimizer.update(expected, g, expected_state, step=step, lr=lr, ops=OPS)
        for got, want in ((params, expected), (state, expected_state)):
            assert all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)
    held, traced = joined._traced[id(optimizer)]
    assert held is optimizer
    assert (traced is None) == (isinstance(optimizer, SGD) and optimizer.momentum != 0)


def test_a_rule_that_branches_on_the_step_runs_eagerly_on_joined_lists() -> None:
    class WarmSGD(SGD):
        def rule(self, params: Any, grads: Any, state: Any, step: Any, lr: Any, ops: Any) -> Any:
            return super().rule(params, grads, state, step, lr * 0.5 if step < 3 else lr, ops)

    optimizer, joined = WarmSGD(lr=0.1), NamespaceForeach(np, joins=True)
    params, grads = _problem()
    expected = dict(params)
    for step in (1, 2, 3):
        params = optimizer.update(params, grads, {}, step=step, ops=joined)[0]
        expected = optimizer.update(expected, grads, {}, step=step, ops=OPS)[0]
        assert all(np.array_equal(params[k], expected[k]) for k in expected)
    assert joined._traced[id(optimizer)] == (optimizer, None)


def test_the_last_updates_flat_arrays_are_reused_only_for_the_very_arrays_split_from_them() -> None:
    """The next update reuses the flat array behind the views the last one returned, unless a view was replaced;
    a view written in place writes the flat array too, so either way the numbers are the one-at-a-time ones."""
    optimizer, joined = Adam(lr=0.1), NamespaceForeach(np, joins=True)
    params, grads = _problem()
    state = expected_state = optimizer.init(params, OPS)
    expected = params
    for step, change in enumerate(["none", "replace a param", "write a moment in place", "reorder keys"], 1):
        if change == "replace a param":
            params = {**params, "linear_0.bias": params["linear_0.bias"] + 1.0}
            expected = {**expected, "linear_0.bias": expected["linear_0.bias"] + 1.0}
        elif change == "write a moment in place":
            state["exp_avg/linear_0.weight"][0] = 3.0
            expected_state["exp_avg/linear_0.weight"][0] = 3.0
        elif change == "reorder keys":
            params = dict(reversed(list(params.items())))
        params, state = optimizer.update(params, grads, state, step=step, ops=joined)
        expected, expected_state = optimizer.update(expected, grads, expected_state, step=step, ops=OPS)
        for got, want in ((params, expected), (state, expected_state)):
            assert all(np.array_equal(got[k], want[k]) for k in want)
        flat = params["linear_0.weight"].base
        assert flat is not None and all(v.base is flat for v in params.values())


def test_join_reuses_the_flat_array_behind_the_last_splits_views_and_nothing_else() -> None:
    joined = NamespaceForeach(np, joins=True)
    a, b = np.arange(6.0).reshape(2, 3), np.arange(3.0)
    flat = np.arange(9.0) * 2
    views = joined.split(flat, [a, b])
    assert [v.shape for v in views] == [(2, 3), (3,)] and all(np.shares_memory(v, flat) for v in views)
    again = joined.join([views, [a, b]])
    assert again is not None and again[0][0] is flat and np.array_equal(again[1][0], [0, 1, 2, 3, 4, 5, 0, 1, 2])
    views = joined.split(flat, [a, b])
    replaced = joined.join([[views[0], b], [a, b]])  # one view replaced: a new concatenation
    assert replaced is not None and replaced[0][0] is not flat
    assert np.array_equal(replaced[0][0], [0, 2, 4, 6, 8, 10, 0, 1, 2])
    assert joined.join([views, [a, b]])[0][0] is not flat  # each join forgets the splits before it
    longer = np.arange(10.0)
    views = joined.split(longer, [a, b])  # views of part of it only: not a flat array to reuse
    assert joined.join([views, [a, b]])[0][0] is not longer


def test_lists_of_mixed_dtypes_or_shapes_are_not_joined() -> None:
    joined = NamespaceForeach(np, joins=True)
    a, b = np.ones((2, 3), np.float32), np.ones(3, np.float32)
    assert joined.join([[a, b], [a, b]]) is not None
    assert joined.join([[a, b.astype(np.float64)], [a, b]]) is None
    assert joined.join([[a, b], [a, np.ones(4, np.float32)]]) is None
    assert joined.join([[a]]) is None and OPS.join([[a, b]]) is None


def test_grads_in_another_key_order_update_the_same_params() -> None:
    params, grads = _problem()
    optimizer = Adam(lr=0.1)
    state = optimizer.init(params, OPS)
    reordered = dict(reversed(list(grads.items())))
    expected = optimizer.update(params, grads, state, step=1, ops=OPS)[0]
    actual = optimizer.update(params, reordered, state, step=1, ops=OPS)[0]
    assert list(actual) == list(params) and all(np.array_equal(actual[k], expected[k]) for k in params)


def test_sgd_momentum_buffer_starts_as_the_undamped_gradient() -> None:
    optimizer = SGD(lr=0.5, momentum=0.9, dampening=0.5)
    params, grads = {"w": np.array([1.0, 2.0])}, {"w": np.array([0.2, -0.4])}
    state = optimizer.init(params, OPS)
    params, state = optimizer.update(params, grads, state, step=1, lr=0.5, ops=OPS)
    np.testing.assert_array_equal(state["momentum_buffer/w"], [0.2, -0.4])
    np.testing.assert_array_equal(params["w"], [0.9, 2.2])
    params, state = optimizer.update(params, grads, state, step=2, lr=0.5, ops=OPS)
    np.testing.assert_allclose(state["momentum_buffer/w"], [0.9 * 0.2 + 0.5 * 0.2, -(0.9 * 0.4 + 0.5 * 0.4)])


def test_adam_first_step_moves_each_weight_by_lr_against_its_gradient() -> None:
    optimizer = Adam(lr=0.01, eps=0.0)
    params, grads = {"w": np.array([1.0, -1.0, 0.5])}, {"w": np.array([3.0, -0.001, 20.0])}
    new_params, _ = optimizer.update(params, grads, optimizer.init(params, OPS), step=1, ops=OPS)
    np.testing.assert_allclose(new_params["w"], [0.99, -0.99, 0.49], rtol=1e-12)


def test_adamw_decays_the_weights_by_lr_times_weight_decay() -> None:
    optimizer = AdamW(lr=0.1, weight_decay=0.5)
    params, grads = {"w": np.array([2.0])}, {"w": np.array([0.0])}
    new_params, _ = optimizer.update(params, grads, optimizer.init(params, OPS), step=1, ops=OPS)
    np.testing.assert_allclose(new_params["w"], [2.0 * (1 - 0.1 * 0.5)])


def test_a_float64_learning_rate_array_keeps_float32_params_float32() -> None:
    params = {"w": np.ones(3, np.float32)}
    for optimizer in ALL_OPTIONS:
        state = optimizer.init(params, OPS)
        new_params, new_state = optimizer.update(
            params, {"w": np.ones(3, np.float32)}, state, step=np.int64(1), lr=np.float64(0.1), ops=OPS
        )
        assert {v.dtype for v in [*new_params.values(), *new_state.values()]} == {np.dtype(np.float32)}, optimizer


def test_mismatched_keys_and_bad_steps_are_clear_errors() -> None:
    params, grads = _problem()
    optimizer = Adam()
    state = optimizer.init(params, OPS)
    with pytest.raises(ml.KeyNotFoundError, match=r"grads is keyed unlike the params.*missing \['linear_0.bias'\]"):
        optimizer.update(params, {"linear_0.weight": grads["linear_0.weight"]}, state, step=1, ops=OPS)
    other = AdamW(amsgrad=True).init(params, OPS)
    with pytest.raises(
        ml.KeyNotFoundError, match=r"opt_state is keyed unlike .*unexpected \['max_exp_avg_sq/linear_0.bias'"
    ):
        optimizer.update(params, grads, other, step=1, ops=OPS)
    with pytest.raises(ValueError, match="step counts from 1 .*got 0"):
        optimizer.update(params, grads, state, step=0, ops=OPS)
    with pytest.raises(TypeError, match="step must be an int"):
        optimizer.update(params, grads, state, step=1.0, ops=OPS)
    with pytest.raises(ValueError, match="lr must be >= 0, got -0.1"):
        optimizer.update(params, grads, state, step=1, lr=-0.1, ops=OPS)
    assert optimizer.update({}, {}, {}, step=1, ops=OPS) == ({}, {})


def test_clip_grad_norm_scales_by_max_norm_over_the_global_norm() -> None:
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    assert float(ml.optim.global_norm(grads, OPS)) == 5.0
    clipped = ml.optim.clip_grad_norm(grads, 1.0, OPS)
    np.testing.assert_allclose(clipped["a"], [3.0 / (5.0 + 1e-6)], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[4.0 / (5.0 + 1e-6)]], rtol=1e-15)
    assert grads["a"][0] == 3.0, "the input gradients are not modified"
    within = ml.optim.clip_grad_norm(grads, 10.0, OPS)
    assert all(np.array_equal(within[k], grads[k]) for k in grads)
    assert ml.optim.clip_grad_norm({}, 1.0, OPS) == {}
    with pytest.raises(ValueError, match="ml.optim.clip_grad_norm: max_norm must be >= 0, got -1"):
        ml.optim.clip_grad_norm(grads, -1, OPS)


# Values read from torch.optim.lr_scheduler (lr 0.1, scheduler.step() after each optimizer step).
TORCH_SCHEDULES = [
    (schedules.step(step_size=3, gamma=0.5), [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]),
    (
        schedules.cosine(T_max=4, eta_min=0.01),
        [0.1, 0.08681980515339464, 0.055, 0.023180194846605363, 0.01, 0.023180194846605363, 0.055,
         0.08681980515339469, 0.1, 0.0868198051533947],
    ),
    (schedules.linear_warmup(3, start_factor=0.25), [0.025, 0.05, 0.075, 0.1, 0.1]),
    (
        schedules.sequential([schedules.linear_warmup(2, start_factor=0.5), schedules.cosine(T_max=4)], milestones=[2]),
        [0.05, 0.075, 0.1, 0.08535533905932738, 0.05, 0.014644660940672627, 0.0, 0.014644660940672622],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("schedule", "expected"), TORCH_SCHEDULES, ids=repr)
def test_schedules_give_torch_lr_scheduler_values(schedule: schedules.Schedule, expected: list[float]) -> None:
    assert [schedule(step, 0.1) for step in range(len(expected))] == pytest.approx(expected, rel=1e-12, abs=1e-17)


def test_chain_multiplies_the_factors() -> None:
    chained = schedules.chain([schedules.linear_warmup(4, start_factor=0.5), schedules.step(2, gamma=0.1)])
    assert chained(2, 1.0) == pytest.approx(0.75 * 0.1)
    assert chained(5, 1.0) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: schedules.step(0), ValueError, "ml.optim.schedules.step: step_size must be >= 1, got 0"),
        (lambda: schedules.step(2.5), TypeError, "ml.optim.schedules.step: step_size must be an int, got 2.5"),
        (lambda: schedules.step(2, gamma=-1), ValueError, "gamma must be >= 0, got -1"),
        (lambda: schedules.cosine(0), ValueError, "ml.optim.schedules.cosine: T_max must be >= 1, got 0"),
        (lambda: schedules.cosine(5, eta_min=-0.1), ValueError, "eta_min must be >= 0, got -0.1"),
        (lambda: schedules.linear_warmup(0), ValueError, "total_iters must be >= 1, got 0"),
        (lambda: schedules.linear_warmup(5, start_factor=2), ValueError, "start_factor must be in [0, 1], got 2"),
        (
            lambda: schedules.sequential([schedules.step(2), schedules.cosine(3)], milestones=[]),
            ValueError,
            "milestones must be 1 increasing step indices (one fewer than the 2 schedules), got []",
        ),
        (
            lambda: schedules.sequential([schedules.step(2)] * 3, milestones=[5, 5]),
            ValueError,
            "milestones must be 2 increasing step indices",
        ),
        (lambda: schedules.sequential([0.1], milestones=[]), TypeError, "schedules must be a non-empty list"),
        (lambda: schedules.chain([]), TypeError, "schedules must be a non-empty list"),
    ],
)
def test_bad_schedule_arguments_are_clear_errors(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_a_schedule_is_called_with_a_step_index_from_zero() -> None:
    schedule = schedules.cosine(10)
    assert schedule(0, 0.3) == 0.3 and math.isclose(schedule(10, 0.3), 0.0, abs_tol=1e-18)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        schedule(-1, 0.3)


def test_a_backend_without_an_array_module_must_provide_foreach_ops() -> None:
    with pytest.raises(ml.UnsupportedError, match="override `foreach_ops`"):
        ml.Backend.foreach_ops(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a backend"):
        ml.optim.foreach_ops(np)  # type: ignore[arg-type]
