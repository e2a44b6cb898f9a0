"""Training: the loop, optimizer and schedule, checkpoints, metrics."""

from shareddiff.train.checkpoint import latest_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from shareddiff.train.trainer import TrainingDiverged, TrainResult, lr_at, train

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "latest_checkpoint",
    "load_model",
    "lr_at",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
