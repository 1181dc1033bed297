"""Training with the paper's recipe: checkpoints, snapshots, torchrun/DDP."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, demo_config
from .loop import build_model, evaluate, renormalize_filters, train
from .reuse import train_or_reuse

__all__ = ["TrainConfig", "demo_config", "build_model", "evaluate", "latest_checkpoint", "load_checkpoint",
           "renormalize_filters", "save_checkpoint", "train", "train_or_reuse"]
