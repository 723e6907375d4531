"""Training and checkpoints."""

from nora.train.checkpoint import load_model, save_model
from nora.train.trainer import RunResult, extended, saved_config, train

__all__ = ["RunResult", "extended", "load_model", "save_model", "saved_config", "train"]
