"""Training plumbing shared by every diffusion system: the Lightning base module, EMA weights, atomic checkpoints."""

from .base import DiffusionModule, NonFiniteLossError, lr_factor
from .checkpoint import AtomicCheckpointIO
from .ema import EMA

__all__ = ["EMA", "AtomicCheckpointIO", "DiffusionModule", "NonFiniteLossError", "lr_factor"]
