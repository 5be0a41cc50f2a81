"""Training: `ml.Trainer`, its state, callbacks and checkpoints."""

from .callbacks import Callback, CSVLogger, EarlyStopping, JSONLogger, ModelCheckpoint
from .state import TrainState
from .trainer import Trainer

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "JSONLogger", "ModelCheckpoint", "TrainState", "Trainer"]
