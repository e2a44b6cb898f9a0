"""Training: the loop, optimizer and schedule, checkpoints, metrics."""

from shareddiff.train.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from shareddiff.train.runlock import RunFolderBusy
from shareddiff.train.trainer import ScheduleChanged, TrainingDiverged, TrainingInterrupted, TrainResult, lr_at, train

__all__ = [
    "CheckpointWriteError",
    "RunFolderBusy",
    "ScheduleChanged",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "latest_checkpoint",
    "load_model",
    "lr_at",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
