"""Training and checkpoints."""

from nora.train.checkpoint import load_model, save_model
from nora.train.trainer import RunResult, train

__all__ = ["RunResult", "load_model", "save_model", "train"]
