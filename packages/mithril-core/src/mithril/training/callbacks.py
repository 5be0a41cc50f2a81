"""Callbacks of `Trainer.fit`: the protocol, early stopping, checkpoints and history loggers.

A callback is any object with some of the `Callback` methods; `fit` calls those it has. Every
method gets the trainer and the current state; setting `trainer.stop_training = True` ends the
run after the current step.
"""

from __future__ import annotations

import csv
import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .state import TrainState

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "JSONLogger", "ModelCheckpoint"]


class Callback:
    """Base class with every hook doing nothing; subclass and override the hooks you need."""

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, trainer: Trainer, state: TrainState, epoch: int) -> None:
        """Before epoch `epoch` (0-based)."""

    def on_step_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        """After each optimizer step; `state.step` counts the steps so far, `logs` has the batch's metrics."""

    def on_epoch_end(self, trainer: Trainer, state: TrainState, epoch: int, logs: dict[str, float]) -> None:
        """After epoch `epoch` and its validation; `logs` has the epoch's means and `val_` metrics."""

    def on_train_end(self, trainer: Trainer, state: TrainState, history: dict[str, list[float]]) -> None:
        """After the last epoch, an early stop or an interrupt."""


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    `restore_best=True` makes `fit` return the state of the best epoch rather than the last.
    """

    def __init__(
        self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "min",
        restore_best: bool = False,
    ) -> None:  # fmt: skip
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError(f"EarlyStopping: patience and min_delta must be >= 0, got {patience}, {min_delta}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best = restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_state: TrainState | None = None
        self.waited = 0

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_state, self.waited = None, 0

    def on_epoch_end(self, trainer: Trainer, state: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not among the epoch's logs {sorted(logs)}")
        value = logs[self.monitor]
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.best_state, self.waited = value, state, 0
        else:
            self.waited += 1
            if self.waited > self.patience:
                trainer.stop_training = True
        if self.restore_best and self.best_state is not None:
            trainer.restore_state = self.best_state


class ModelCheckpoint(Callback):
    """Save a checkpoint every `every_n_epochs` epochs or every `every_n_steps` steps.

    `path` may hold `{epoch}` (1-based) and `{step}`; without them each save replaces the last.
    """

    def __init__(self, path: str | os.PathLike[str], every_n_epochs: int | None = 1, every_n_steps: int | None = None):
        if every_n_epochs is None and every_n_steps is None:
            raise ValueError("ModelCheckpoint: give every_n_epochs or every_n_steps")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise ValueError(f"ModelCheckpoint: {name} must be >= 1, got {value}")
        self.path, self.every_n_epochs, self.every_n_steps = str(path), every_n_epochs, every_n_steps
        self.epoch = 0
        self.saved: list[str] = []

    def on_epoch_begin(self, trainer: Trainer, state: TrainState, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, trainer: Trainer, state: TrainState, logs: dict[str, float]) -> None:
        if self.every_n_steps is not None and state.step % self.every_n_steps == 0:
            self._save(trainer, state)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, state)

    def _save(self, trainer: Trainer, state: TrainState) -> None:
        path = self.path.format(epoch=self.epoch + 1, step=state.step)
        trainer.save(state, path)
        self.saved.append(path)


class _HistoryLogger(Callback, ABC):
    """Writes the epoch logs to a file after every epoch (so a crash keeps what was logged)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []

    def on_train_begin(self, trainer: Trainer, state: TrainState) -> None:
        self.rows = []

    def on_epoch_end(self, trainer: Trainer, state: TrainState, epoch: int, logs: dict[str, float]) -> None:
        self.rows.append({"epoch": epoch + 1, "step": state.step, **logs})
        self.write()

    @abstractmethod
    def write(self) -> None:
        """Write every row logged so far."""


class CSVLogger(_HistoryLogger):
    """One CSV row per epoch: epoch, step and every logged metric."""

    def write(self) -> None:
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)


class JSONLogger(_HistoryLogger):
    """A JSON list with one object per epoch: epoch, step and every logged metric."""

    def write(self) -> None:
        self.path.write_text(json.dumps(self.rows, indent=1, default=_number) + "\n")


def _number(value: Any) -> float:
    return float(value)
