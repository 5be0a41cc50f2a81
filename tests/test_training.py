"""`ml.Trainer` against torch.optim on the same torch.nn model: numbers, state handling, fit, checkpoints, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.models import (
    BatchNorm1d,
    Conv1d,
    CrossEntropyLoss,
    Flatten,
    Linear,
    MaxPool1d,
    Model,
    MSELoss,
    ReLU,
)

torch = pytest.importorskip("torch", reason="the torch.optim reference needs torch")

FLOAT64_BACKENDS = [b for b in ("numpy", "torch", "jax") if b in ml.available_backends()]
STEPS = 25


def _mlp() -> tuple[Model, Any]:
    model = Model()
    model |= Linear(dimension=16)(input="input")
    model += ReLU()
    model += Linear(dimension=3)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    return model, ref


def _cnn() -> tuple[Model, Any]:
    model = Model()
    model |= Conv1d(in_channels=2, out_channels=4, kernel_size=3, padding=1)(input="input", output="conv")
    model += ReLU()(input="conv", output="relu")  # before the norm: a bias before BatchNorm has no gradient
    model += BatchNorm1d(num_features=4)(input="relu", output="bn")
    model += MaxPool1d(kernel_size=2)(input="bn", output="pool")
    model += Flatten()(input="pool", output="flat")
    model += Linear(dimension=3)(input="flat", output="output")
    ref = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm1d(4), torch.nn.MaxPool1d(2),
        torch.nn.Flatten(), torch.nn.Linear(16, 3),
    ).double()  # fmt: skip
    return model, ref


MODELS: dict[str, tuple[Callable[[], tuple[Model, Any]], list[int | None]]] = {
    "mlp": (_mlp, [None, 5]),
    "cnn": (_cnn, [None, 2, 8]),
}
# Mithril parameter and state keys in torch's parameter and buffer order.
PARAMS = {
    "mlp": ["linear_0.weight", "linear_0.bias", "linear_1.weight", "linear_1.bias"],
    "cnn": ["conv1d_0.weight", "conv1d_0.bias", "batchnorm1d_0.weight", "batchnorm1d_0.bias", "linear_0.weight",
            "linear_0.bias"],
}  # fmt: skip
OPTIMIZERS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "sgd_momentum_nesterov_wd": (
        lambda: ml.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    ),
    "sgd_dampening": (
        lambda: ml.optim.SGD(lr=0.05, momentum=0.5, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, dampening=0.3),
    ),
    "adam_wd_amsgrad": (
        lambda: ml.optim.Adam(lr=1e-2, weight_decay=1e-2, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    ),
    "adamw": (lambda: ml.optim.AdamW(lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
    "rmsprop_centered_momentum": (
        lambda: ml.optim.RMSprop(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3),
    ),
}


def _batches(shape: list[int | None], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((6, *shape[1:])), "target": rng.integers(0, 3, 6)} for _ in range(n)]


def _copy_into(ref: Any, keys: list[str], params: dict[str, Any], backend: Any) -> None:
    with torch.no_grad():
        for p, key in zip(ref.parameters(), keys):
            p.copy_(torch.from_numpy(np.array(backend.to_numpy(params[key]))))


def _close(got: Any, want: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-9, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("backend_name", FLOAT64_BACKENDS)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_steps_equal_torch_optim(backend_name: str, model_name: str, opt_name: str) -> None:
    build, shape = MODELS[model_name]
    model, ref = build()
    make_opt, make_ref_opt = OPTIMIZERS[opt_name]
    backend = ml.backend(backend_name, dtype=ml.float64)
    trainer = ml.Trainer(model, backend, loss=CrossEntropyLoss(), optimizer=make_opt(), shapes={"input": shape})
    state = trainer.init(seed=1)
    assert sorted(state.params) == sorted(ml.compile(model, backend, shapes={"input": shape}).randomize_params())
    _copy_into(ref, PARAMS[model_name], state.params, backend)
    ref_opt = make_ref_opt(ref.parameters())
    for i, batch in enumerate(_batches(shape, STEPS)):
        state, metrics = trainer.step(state, batch)
        ref_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            ref(torch.from_numpy(batch["input"])), torch.from_numpy(batch["target"])
        )
        loss.backward()
        ref_opt.step()
        _close(float(metrics["loss"]), loss.item(), f"loss at step {i + 1}")
    assert state.step == STEPS
    for p, key in zip(ref.parameters(), PARAMS[model_name]):
        _close(backend.to_numpy(state.params[key]), p.detach().numpy(), key)
    if model_name == "cnn":  # running statistics changed exactly once per step
        bn = ref[2]
        _close(backend.to_numpy(state.model_state["batchnorm1d_0.running_mean"]), bn.running_mean.numpy(), "mean")
        _close(backend.to_numpy(state.model_state["batchnorm1d_0.running_var"]), bn.running_var.numpy(), "var")


@pytest.mark.parametrize("backend_name", FLOAT64_BACKENDS)
def test_step_leaves_the_given_state_unchanged(backend_name: str) -> None:
    backend = ml.backend(backend_name, dtype=ml.float64)
    model, _ = _cnn()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 2, 8]}
    )
    state = trainer.init(seed=0)
    before = {
        k: np.array(backend.to_numpy(v))
        for part in (state.params, state.opt_state, state.model_state)
        for k, v in part.items()
    }
    new, _ = trainer.step(state, _batches([None, 2, 8], 1)[0])
    after = {
        k: np.array(backend.to_numpy(v))
        for part in (state.params, state.opt_state, state.model_state)
        for k, v in part.items()
    }
    assert new.step == 1 and state.step == 0
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_schedule_and_clipping_equal_torch() -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model, ref = _mlp()
    schedule = ml.optim.schedules.step(step_size=5, gamma=0.5)
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.5, momentum=0.9), clip_grad_norm=0.1,
        lr_schedule=schedule, shapes={"input": [None, 5]},
    )  # fmt: skip
    state = trainer.init(seed=3)
    _copy_into(ref, PARAMS["mlp"], state.params, backend)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.5)
    for batch in _batches([None, 5], 15, seed=4):
        state, _ = trainer.step(state, batch)
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(
            ref(torch.from_numpy(batch["input"])), torch.from_numpy(batch["target"])
        ).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
        ref_opt.step()
        ref_sched.step()
    for p, key in zip(ref.parameters(), PARAMS["mlp"]):
        _close(backend.to_numpy(state.params[key]), p.detach().numpy(), key)


def test_several_outputs_with_weighted_losses() -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model = Model()
    model |= Linear(dimension=3)(input="input", output="logits")
    model |= Linear(dimension=2)(input="input", output="value")
    trainer = ml.Trainer(
        model, backend, loss={"logits": CrossEntropyLoss(), "value": MSELoss()}, loss_weights={"value": 0.5},
        optimizer=ml.optim.SGD(lr=0.1), shapes={"input": [None, 4]},
    )  # fmt: skip
    assert trainer.batch_keys == {"input", "logits.target", "value.target"}
    state = trainer.init(seed=0)
    rng = np.random.default_rng(0)
    batch = {
        "input": rng.standard_normal((5, 4)),
        "logits.target": rng.integers(0, 3, 5),
        "value.target": rng.standard_normal((5, 2)),
    }
    _, metrics = trainer.step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["logits.loss"]) + 0.5 * float(metrics["value.loss"]))


@pytest.mark.parametrize("backend_name", FLOAT64_BACKENDS)
def test_fit_learns_digits_and_reports_history(backend_name: str) -> None:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn provides the digits data")
    x, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order] / 16.0, y[order]
    backend = ml.backend(backend_name, dtype=ml.float64)
    model = Model()
    model |= Linear(dimension=32)(input="input")
    model += ReLU()
    model += Linear(dimension=10)
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=1e-2), metrics=["accuracy"],
        shapes={"input": [None, 64]},
    )  # fmt: skip
    state = trainer.init(seed=0)
    state, history = trainer.fit(
        state,
        (x[:1400], y[:1400]),
        epochs=8,
        batch_size=64,
        seed=0,
        progress=False,
        validation_data=(x[1400:], y[1400:]),
    )
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 8 and history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    assert trainer.evaluate(state, (x[1400:], y[1400:]))["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    predicted = np.asarray(backend.to_numpy(trainer.predict(state, x[1400:], batch_size=100)))
    assert predicted.shape == (len(x) - 1400, 10)


def test_fit_is_repeatable_and_early_stopping_restores_the_best() -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model, _ = _mlp()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.5), shapes={"input": [None, 5]}
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    runs = [
        trainer.fit(trainer.init(seed=0), (x, y), epochs=3, batch_size=8, seed=7, progress=False)[1] for _ in range(2)
    ]
    assert runs[0] == runs[1]
    stopper = ml.training.EarlyStopping(monitor="loss", patience=1, min_delta=0.02, restore_best=True)
    state, history = trainer.fit(
        trainer.init(seed=0), (x, y), epochs=50, batch_size=40, progress=False, callbacks=[stopper]
    )
    assert len(history["loss"]) < 50
    assert stopper.best in history["loss"] and state is stopper.best_state
    assert state.step == history["loss"].index(stopper.best) + 1  # one full batch per epoch


def test_checkpoint_resumes_bit_identically(tmp_path: Path) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model, _ = _cnn()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 2, 8]}
    )
    batches = _batches([None, 2, 8], 6)
    state = trainer.init(seed=0)
    for batch in batches[:3]:
        state, _ = trainer.step(state, batch)
    trainer.save(state, tmp_path / "ckpt.safetensors")
    resumed = trainer.load(tmp_path / "ckpt.safetensors")
    assert resumed.step == 3
    for batch in batches[3:]:
        state, _ = trainer.step(state, batch)
        resumed, _ = trainer.step(resumed, batch)
    for part in ("params", "model_state", "opt_state"):
        for key, value in getattr(state, part).items():
            np.testing.assert_array_equal(getattr(resumed, part)[key], value, err_msg=key)


def test_checkpoint_of_another_model_or_optimizer_is_refused(tmp_path: Path) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model, _ = _mlp()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 5]}
    )
    trainer.save(trainer.init(seed=0), tmp_path / "a.safetensors")
    other, _ = _mlp()
    wider = ml.Trainer(other, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 6]})
    with pytest.raises(ml.ShapeError, match=r"'linear_0.weight' has shape \[16, 5\], expected \[16, 6\]"):
        wider.load(tmp_path / "a.safetensors")
    sgd = ml.Trainer(
        _mlp()[0], backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.1), shapes={"input": [None, 5]}
    )
    with pytest.raises(ml.MithrilError, match="optimizer is 'Adam', but this trainer's is 'SGD'"):
        sgd.load(tmp_path / "a.safetensors")


def test_bad_batches_and_params_are_refused_before_any_update() -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model, _ = _mlp()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 5]}
    )
    state = trainer.init(seed=0)
    x = np.zeros((4, 5))
    with pytest.raises(ml.KeyNotFoundError, match=r"missing \['target'\]"):
        trainer.step(state, {"input": x})
    with pytest.raises(ml.KeyNotFoundError, match=r"unexpected keys \['extra'\]"):
        trainer.step(state, {"input": x, "target": np.zeros(4, np.int64), "extra": x})
    with pytest.raises(ml.IndexRangeError, match="3"):
        trainer.step(state, {"input": x, "target": np.array([0, 1, 2, 3])})
    with pytest.raises(ml.ShapeError, match=r"params\['linear_0.weight'\] has shape \[16, 4\], expected \[16, 5\]"):
        trainer.init(params={**state.params, "linear_0.weight": np.zeros((16, 4))})
    with pytest.raises(ml.KeyNotFoundError, match=r"missing \['linear_1.bias'\]"):
        trainer.init(params={k: v for k, v in state.params.items() if k != "linear_1.bias"})
    nan_trainer = ml.Trainer(
        _mlp()[0], backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.1), check_nan=True,
        shapes={"input": [None, 5]},
    )  # fmt: skip
    nan_state = nan_trainer.init(seed=0)
    with pytest.raises(FloatingPointError, match="at step 1"):
        nan_trainer.step(nan_state, {"input": np.full((4, 5), np.nan), "target": np.zeros(4, np.int64)})
    assert nan_state.step == 0


@pytest.mark.skipif(
    "ggml" not in ml.available_backends(), reason="needs the ggml backend: pip install -e packages/mithril-ggml"
)
def test_ggml_steps_equal_torch_optim_in_float32() -> None:
    backend = ml.backend("ggml")
    model, ref = _mlp()
    ref = ref.float()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=1e-2), shapes={"input": [None, 5]}
    )
    state = trainer.init(seed=0)
    _copy_into(ref, PARAMS["mlp"], state.params, backend)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for batch in _batches([None, 5], 10):
        x = batch["input"].astype(np.float32)
        state, metrics = trainer.step(state, {"input": x, "target": batch["target"]})
        ref_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(batch["target"]))
        loss.backward()
        ref_opt.step()
        assert float(metrics["loss"]) == pytest.approx(loss.item(), rel=1e-5)
    for p, key in zip(ref.parameters(), PARAMS["mlp"]):
        np.testing.assert_allclose(state.params[key], p.detach().numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


def test_keyboard_interrupt_returns_the_last_completed_step() -> None:
    class Interrupt(ml.training.Callback):
        def on_step_end(self, trainer: Any, state: Any, logs: dict[str, float]) -> None:
            if state.step == 3:
                raise KeyboardInterrupt

    backend = ml.backend("numpy", dtype=ml.float64)
    model, _ = _mlp()
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.1), shapes={"input": [None, 5]}
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    state, history = trainer.fit(
        trainer.init(seed=0), (x, y), epochs=2, batch_size=8, progress=False, callbacks=[Interrupt()]
    )
    assert state.step == 3 and history["interrupted_at_step"] == [3.0]
    again, _ = trainer.fit(state, (x, y), epochs=1, batch_size=8, progress=False)
    assert again.step == 8


@pytest.mark.parametrize("backend_name", FLOAT64_BACKENDS)
def test_checkpoint_restores_the_random_state_so_dropout_resumes_identically(backend_name: str, tmp_path: Path) -> None:
    from mithril.models import Dropout

    backend = ml.backend(backend_name, dtype=ml.float64)
    model = Model()
    model |= Linear(dimension=8)(input="input")
    model += Dropout(p=0.5)
    model += Linear(dimension=3)
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(), shapes={"input": [None, 5]}
    )
    batches = _batches([None, 5], 6)
    state = trainer.init(seed=0)
    for batch in batches[:3]:
        state, _ = trainer.step(state, batch)
    trainer.save(state, tmp_path / "ckpt.safetensors")
    losses = [float(trainer.step(state := trainer.step(state, b)[0], b)[1]["loss"]) for b in batches[3:4]]
    resumed = trainer.load(tmp_path / "ckpt.safetensors")
    again = [float(trainer.step(resumed := trainer.step(resumed, b)[0], b)[1]["loss"]) for b in batches[3:4]]
    assert losses == again


def test_checkpoint_paths_are_checked_before_writing(tmp_path: Path) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    trainer = ml.Trainer(
        _mlp()[0], backend, loss=CrossEntropyLoss(), optimizer=ml.optim.SGD(lr=0.1), shapes={"input": [None, 5]}
    )
    state = trainer.init(seed=0)
    with pytest.raises(FileNotFoundError, match=r"Trainer.save: cannot write .*: directory .*nope' does not exist"):
        trainer.save(state, tmp_path / "nope" / "c.safetensors")
    with pytest.raises(FileNotFoundError, match=r"Trainer.load: no file"):
        trainer.load(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ml.MithrilError, match="not a readable safetensors checkpoint"):
        trainer.load(tmp_path / "bad.safetensors")
