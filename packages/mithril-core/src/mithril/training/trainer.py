"""`ml.Trainer`: a model, its loss and an optimizer compiled into one training step per batch.

The training graph is the model's own graph with the loss attached (`training_graph`), so the
state's parameter keys are the model's. A step is one forward, one backward and one optimizer
update: backends that can compile all three as one program do (`Program.fused_step`: JAX, one
`jax.jit`); the others run their compiled forward+backward and the optimizer's list-wise update
(torch's foreach kernels). BatchNorm statistics change once per step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..backend import Backend, FusedStep
from ..compiler import CompiledModel, compile_options, lower_graph
from ..errors import KeyNotFoundError, ShapeError
from ..models.base import BaseModel, Model
from ..optim import Optimizer, clip_grad_norm
from .callbacks import Callback
from .checkpoint import read_checkpoint, write_checkpoint
from .data import Batches, as_columns
from .graph import training_graph
from .metrics import Metric, resolve_metrics
from .state import TrainState

__all__ = ["Trainer"]

Schedule = Callable[[int, float], float]


class Trainer:
    """Trains `model` on `backend` with `loss` and `optimizer`; see docs/user-guide/training.md.

    loss: a loss model connected to the model's canonical output (its other input is the batch
    key "target"), a dict {output key: loss} for several outputs (batch keys "<output>.target"),
    or None when the model's output already is the loss. loss_weights: {output key: weight}.
    metrics: names ("accuracy") or `(output, target) -> float` callables, reported per batch and epoch.
    clip_grad_norm: clip the global gradient norm to this value before each update.
    lr_schedule: `schedule(step_index, base_lr) -> lr`, e.g. from `ml.optim.schedules`.
    check_nan: raise FloatingPointError, naming the step, when the loss is not finite (the state
    passed in is left as it was). Other keyword arguments go to `ml.compile`'s backend options.
    """

    def __init__(
        self,
        model: BaseModel,
        backend: Backend,
        loss: BaseModel | Mapping[str, BaseModel] | None = None,
        optimizer: Optimizer | None = None,
        *,
        shapes: Mapping[str, Sequence[int | None]] | None = None,
        metrics: Sequence[str | Metric] = (),
        loss_weights: Mapping[str, float] | None = None,
        clip_grad_norm: float | None = None,
        lr_schedule: Schedule | None = None,
        check_nan: bool = False,
        jit: bool | None = None,
        **backend_options: Any,
    ) -> None:
        if not isinstance(model, BaseModel):
            raise TypeError(f"ml.Trainer: model must be a Mithril model, got {type(model).__name__}")
        if not isinstance(backend, Backend):
            raise TypeError(f"ml.Trainer: backend must be a Mithril backend instance, got {type(backend).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"ml.Trainer: optimizer must be an ml.optim optimizer (e.g. ml.optim.Adam()), got {optimizer!r}"
            )
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"ml.Trainer: clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
        self.model, self.backend, self.optimizer = model, backend, optimizer
        self.clip_grad_norm, self.lr_schedule, self.check_nan = clip_grad_norm, lr_schedule, check_nan
        self.metrics = resolve_metrics(metrics)
        self.ops = backend.foreach_ops()
        losses, single = self._loss_models, self._single = _losses(model, loss)
        weights = dict(loss_weights or {})
        unknown = sorted(set(weights) - set(losses or {}))
        if unknown:
            raise KeyNotFoundError(
                f"ml.Trainer: loss_weights names {unknown}, which have no loss; losses are {sorted(losses or {})}"
            )
        self._shapes = dict(shapes or {})
        self._jit = jit
        self._backend_options = backend_options
        options = compile_options(backend, jit, False, False, None, backend_options)
        graph, self.losses = training_graph(
            model, losses, weights, single=single, inference=False, model_outputs=bool(self.metrics)
        )
        graph, program = lower_graph(graph, backend, options, self._shapes)
        self.compiled = CompiledModel(graph, backend, program, options, None)
        self.target_keys = [k for spec in self.losses for k in spec.batch_keys.values()]
        self.input_keys = [k for k in self.compiled.input_keys if k not in self.target_keys]
        self.batch_keys = frozenset(self.compiled.input_keys)
        self._updates = {e.name: e.updates for e in graph.outputs if e.updates is not None}
        self._step = self._make_step(program)
        self._eval: CompiledModel | None = None
        self._predict: CompiledModel | None = None
        self.stop_training = False
        self.restore_state: TrainState | None = None
        self._latest: TrainState | None = None

    # -- the step --------------------------------------------------------------------
    def _update(self, params: Any, grads: Any, opt_state: Any, step: Any, lr: Any) -> tuple[Any, Any]:
        """Clip (when asked) and apply the optimizer: the part of a step after the gradients."""
        if self.clip_grad_norm is not None:
            grads = clip_grad_norm(grads, self.clip_grad_norm, self.ops)
        return self.optimizer.update(params, grads, opt_state, step=step, lr=lr, ops=self.ops)

    def _make_step(self, program: Any) -> FusedStep:
        """The backend's one-program step when it has one, else forward_backward then the update."""
        seeds = {spec.loss_key: spec.weight for spec in self.losses}
        fused = program.fused_step(seeds, self._update)
        if fused is not None:
            return fused
        seed_arrays = {key: self.backend.array(np.asarray(float(weight))) for key, weight in seeds.items()}
        forward_backward = program.forward_backward
        update = self._update

        def step(params: Any, inputs: Any, opt_state: Any, t: Any, lr: Any) -> tuple[Any, Any, Any]:
            outputs, grads = forward_backward(params, inputs, seed_arrays)
            new_params, new_opt_state = update(params, grads, opt_state, t, lr)
            return new_params, new_opt_state, outputs

        return step

    def init(self, seed: int | None = None, params: Mapping[str, Any] | None = None) -> TrainState:
        """A fresh state: parameters drawn like `randomize_params(seed)` or taken from `params`, zero opt state."""
        if params is None:
            values = self.compiled.randomize_params(seed)
        else:
            values = self._checked_params(params)
        values = self.compiled.program.place_params(values)  # on a device mesh: sharded params stay sharded
        model_state = self.compiled.initial_state()
        return TrainState(values, model_state, self.optimizer.init(values, self.ops), 0)

    def _checked_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` as backend arrays after checking their keys and shapes against the model's."""
        owner = f"ml.Trainer({self.model.describe()}).init"
        if not isinstance(params, Mapping):
            raise TypeError(
                f"{owner}: params must be a dict keyed like randomize_params(), got {type(params).__name__}"
            )
        expected = {e.name: self.compiled._concrete(e) for e in self.compiled.graph.params}
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        if missing or extra:
            raise KeyNotFoundError(f"{owner}: params are missing {missing} and have unexpected keys {extra}")
        out = {}
        for key, shape in expected.items():
            array = params[key] if self.backend.is_array(params[key]) else self.backend.array(params[key])
            if tuple(array.shape) != shape:
                raise ShapeError(f"{owner}: params[{key!r}] has shape {list(array.shape)}, expected {list(shape)}")
            out[key] = array
        return out

    def step(self, state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict[str, Any]]:
        """One optimizer step on `batch`: (the new state, metrics). `state` itself is not changed.

        Batch values may be arrays of the backend or NumPy; float ones are cast to the model's dtype.
        """
        inputs = self._batch(batch)
        t = state.step + 1
        # None: the optimizer's own lr, a constant of the traced step rather than an argument converted per call
        lr = None if self.lr_schedule is None else self.lr_schedule(state.step, self.optimizer.lr)
        params, opt_state, outputs = self._step(state.params, {**inputs, **state.model_state}, state.opt_state, t, lr)
        model_state = dict(state.model_state)
        for key, replaces in self._updates.items():
            model_state[replaces] = outputs.pop(key)
        metrics = self._metrics(outputs, inputs)
        if self.check_nan and not math.isfinite(float(metrics["loss"])):
            raise FloatingPointError(
                f"ml.Trainer({self.model.describe()}): the loss is {float(metrics['loss'])} at step {t}; "
                "the state passed to this step is unchanged"
            )
        return TrainState(params, model_state, opt_state, t), metrics

    def _batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's arrays as backend arrays, after checking its keys."""
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"ml.Trainer: a batch is a dict keyed by {sorted(self.batch_keys)}, got {type(batch).__name__}"
            )
        self._check_keys(batch.keys())
        return {key: self._as_array(value) for key, value in batch.items()}

    def _as_array(self, value: Any) -> Any:
        """A batch value as a backend array: NumPy and other arrays converted, floats cast to the model's dtype
        (on every backend alike; integer targets keep their type)."""
        backend = self.backend
        if backend.is_array(value):
            dtype = backend.dtype_of(value)
            if dtype is None or dtype is backend.dtype or not dtype.is_floating:
                return value
        return backend.array(value)

    def _check_keys(self, keys: Any) -> None:
        """A KeyNotFoundError naming the missing and unexpected keys unless `keys` are the batch keys."""
        if keys != self.batch_keys:
            missing, extra = sorted(self.batch_keys - set(keys)), sorted(set(keys) - self.batch_keys)
            raise KeyNotFoundError(
                f"ml.Trainer({self.model.describe()}): the batch is missing {missing} and has unexpected keys {extra}; "
                f"expected exactly {sorted(self.batch_keys)}"
            )

    def _metrics(self, outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The total loss (backend array), each loss when there are several, and the named metrics (floats)."""
        loss: Any = None
        for spec in self.losses:
            term = outputs[spec.loss_key] if spec.weight == 1.0 else outputs[spec.loss_key] * spec.weight
            loss = term if loss is None else loss + term
        metrics: dict[str, Any] = {"loss": loss}
        if len(self.losses) > 1:
            metrics.update({spec.loss_key: outputs[spec.loss_key] for spec in self.losses})
        for spec in self.losses:
            if not spec.batch_keys or not self.metrics:
                continue
            output = np.asarray(self.backend.to_numpy(outputs[spec.output]))
            target = np.asarray(self.backend.to_numpy(inputs[next(iter(spec.batch_keys.values()))]))
            prefix = "" if len(self.losses) == 1 else f"{spec.output}."
            for name, metric in self.metrics.items():
                metrics[prefix + name] = metric(output, target)
        return metrics

    # -- inference -------------------------------------------------------------------
    def _eval_model(self) -> CompiledModel:
        """The training graph in inference form (running statistics, no dropout), compiled on first use."""
        if self._eval is None:
            options = compile_options(self.backend, self._jit, True, False, None, self._backend_options)
            losses, single = self._loss_models, self._single
            weights = {spec.output: spec.weight for spec in self.losses}
            graph, _ = training_graph(self.model, losses, weights, single=single, inference=True)
            graph, program = lower_graph(graph, self.backend, options, self._shapes)
            self._eval = CompiledModel(graph, self.backend, program, options, None)
        return self._eval

    def evaluate(self, state: TrainState, data: Any, batch_size: int = 256) -> dict[str, float]:
        """Loss and metrics over `data` in inference form, averaged over rows (floats)."""
        model = self._eval_model()
        totals: dict[str, float] = {}
        rows = 0
        for batch in self._batches(data, batch_size, targets=True):
            outputs, _ = model.apply(state.params, batch, state.model_state)
            n = _rows(batch)
            for key, value in self._metrics(outputs, batch).items():
                totals[key] = totals.get(key, 0.0) + float(value) * n
            rows += n
        if not rows:
            raise ValueError(f"ml.Trainer.evaluate: {self.model.describe()}: the data has no rows")
        return {key: total / rows for key, total in totals.items()}

    def predict(self, state: TrainState, data: Any, batch_size: int = 256) -> Any:
        """The model's canonical output for `data` (inputs only), in inference form, as one backend array."""
        if self._predict is None:
            shapes = {k: v for k, v in self._shapes.items() if k not in self.target_keys}
            from ..compiler import compile as ml_compile  # noqa: PLC0415 - the public entry, not a cycle at import

            self._predict = ml_compile(
                self.model, self.backend, shapes, jit=self._jit, inference=True, **self._backend_options
            )
        model = self._predict
        pieces = []
        for batch in self._batches(data, batch_size, targets=False):
            outputs = (
                model.apply(state.params, batch, state.model_state)[0]
                if model.state_keys
                else model.evaluate(state.params, batch)
            )
            pieces.append(outputs[model.output_keys[0]])
        if len(pieces) == 1:
            return pieces[0]
        return self.backend.array(np.concatenate([np.asarray(self.backend.to_numpy(p)) for p in pieces]))

    def _batches(self, data: Any, batch_size: int, *, targets: bool) -> Iterable[dict[str, Any]]:
        """Unshuffled batches of `data` (arrays) or the batch dicts `data` yields."""
        keys = self.target_keys if targets else []
        columns = as_columns(data, self.input_keys, keys, self.backend, "ml.Trainer")
        if columns is None:
            return (self._batch(batch) if targets else batch for batch in data)
        if targets:
            self._check_keys(columns.keys())  # before any work
        return Batches(columns, batch_size, self.backend).epoch(0)

    # -- fit -------------------------------------------------------------------------
    def fit(
        self,
        state: TrainState,
        data: Any,
        epochs: int = 1,
        batch_size: int = 32,
        *,
        shuffle: bool = True,
        seed: int | None = 0,
        drop_last: bool = False,
        progress: bool = True,
        validation_data: Any = None,
        validation_batch_size: int = 256,
        callbacks: Sequence[Callback] = (),
    ) -> tuple[TrainState, dict[str, list[float]]]:
        """Train for `epochs` epochs: (final state, history with one value per epoch for each metric).

        data: (inputs, targets) arrays of any backend or NumPy (batched here, shuffled by `seed`
        and the epoch), or an iterable of batch dicts (used as given). A keyboard interrupt ends
        the run after the last completed step and returns that state.
        """
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"ml.Trainer.fit: epochs must be a non-negative int, got {epochs!r}")
        columns = as_columns(data, self.input_keys, self.target_keys, self.backend, "ml.Trainer.fit")
        if columns is not None:
            self._check_keys(columns.keys())
            batches: Any = Batches(columns, batch_size, self.backend, shuffle=shuffle, seed=seed, drop_last=drop_last)
        history: dict[str, list[float]] = {}
        self.stop_training, self.restore_state = False, None
        self._latest = state  # the state after the last completed step, kept for an interrupt
        _call(callbacks, "on_train_begin", self, state)
        try:
            for epoch in range(epochs):
                _call(callbacks, "on_epoch_begin", self, state, epoch)
                epoch_batches = batches.epoch(epoch) if columns is not None else data
                total = len(batches) if columns is not None else None
                state, logs = self._epoch(state, epoch_batches, total, epoch, epochs, progress, callbacks)
                if validation_data is not None:
                    logs.update(
                        {f"val_{k}": v for k, v in self.evaluate(state, validation_data, validation_batch_size).items()}
                    )
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                _call(callbacks, "on_epoch_end", self, state, epoch, logs)
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            state = self._latest
            history.setdefault("interrupted_at_step", []).append(float(state.step))
        if self.restore_state is not None:
            state = self.restore_state
        _call(callbacks, "on_train_end", self, state, history)
        return state, history

    def _epoch(
        self, state: TrainState, batches: Iterable[dict[str, Any]], total: int | None, epoch: int, epochs: int,
        progress: bool, callbacks: Sequence[Callback],
    ) -> tuple[TrainState, dict[str, float]]:  # fmt: skip
        """One pass over `batches`, with a progress bar: (state, row-weighted means of the metrics)."""
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # noqa: PLC0415 - only fit draws a bar

        sums: dict[str, float] = {}
        rows = 0
        start = time.perf_counter()
        with tqdm(
            total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=None if progress else True, leave=True
        ) as bar:
            for batch in batches:
                state, metrics = self.step(state, batch)
                self._latest = state
                n = _rows(batch)
                logs = {key: float(value) for key, value in metrics.items()}
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value * n
                rows += n
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}", samples_per_s=f"{rows / (time.perf_counter() - start):.0f}")
                _call(callbacks, "on_step_end", self, state, logs)
                if self.stop_training:
                    break
        return state, {key: value / max(rows, 1) for key, value in sums.items()}

    # -- checkpoints -----------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"model": self.model.describe(), "optimizer": type(self.optimizer).__name__}

    def save(self, state: TrainState, path: str | os.PathLike[str]) -> None:
        """Write `state` (params, model state, optimizer state, step) to a safetensors checkpoint at `path`."""
        header = {
            **self._header(),
            "hyperparameters": self.optimizer.hyperparameters(),
            "dtype": self.backend.dtype.name,
        }
        write_checkpoint(path, state, header, self.backend.to_numpy, self.backend.rng_state())

    def load(self, path: str | os.PathLike[str]) -> TrainState:
        """The state saved at `path` as backend arrays (and the backend's random state restored, so dropout
        continues as if uninterrupted); refused, naming every mismatch, unless it fits this trainer."""
        params = {e.name: self.compiled._concrete(e) for e in self.compiled.graph.params}
        model_state = {e.name: self.compiled._concrete(e) for e in self.compiled.graph.state}
        zeros = {key: self.backend.zeros(*shape) for key, shape in params.items()}
        opt_state = {key: tuple(value.shape) for key, value in self.optimizer.init(zeros, self.ops).items()}
        expected = {"params": params, "model_state": model_state, "opt_state": opt_state}
        sections, step, rng = read_checkpoint(path, expected, self._header())
        if rng is not None and self.backend.rng_state() is not None:
            self.backend.set_rng_state(rng)
        arrays = {
            section: {k: self.backend.array(v) for k, v in values.items()} for section, values in sections.items()
        }
        place = self.compiled.program.place_params
        # optimizer state "<slot>/<param key>" lives where its parameter does
        owner = {k: k.split("/", 1)[-1] for k in arrays["opt_state"]}
        placed = {
            k: place({owner[k]: v})[owner[k]] if owner[k] in params else v for k, v in arrays["opt_state"].items()
        }
        return TrainState(place(arrays["params"]), arrays["model_state"], placed, step)


def _losses(model: BaseModel, loss: Any) -> tuple[dict[str, BaseModel] | None, bool]:
    """({output key: loss model} or None, whether one bare loss was given)."""
    if loss is None:
        return None, True
    if isinstance(loss, BaseModel):
        return {_canonical_output(model): loss}, True
    if isinstance(loss, Mapping) and loss and all(isinstance(v, BaseModel) for v in loss.values()):
        return dict(loss), False
    raise TypeError(
        f"ml.Trainer: loss must be a loss model, a non-empty dict {{output key: loss model}} or None, got {loss!r}"
    )


def _canonical_output(model: BaseModel) -> str:
    """The key `ml.compile(model)` returns by default."""
    if isinstance(model, Model):
        if model.cout is None:
            raise KeyNotFoundError(
                f"ml.Trainer: {model.describe()} has no canonical output; pass loss={{output key: loss}}"
            )
        return model.cout.name or "output"
    if model.canonical_output is None:
        raise KeyNotFoundError(f"ml.Trainer: {model.describe()} has no output")
    return model.canonical_output


def _rows(batch: Mapping[str, Any]) -> int:
    """Rows of a batch: the leading size of its first array with an axis."""
    for value in batch.values():
        shape: tuple[int, ...] = tuple(getattr(value, "shape", ()))
        if shape:
            return int(shape[0])
    return 1


def _call(callbacks: Sequence[Callback], hook: str, *args: Any) -> None:
    """Call `hook` on every callback that has it."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)
