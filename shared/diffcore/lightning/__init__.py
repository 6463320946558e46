"""Training plumbing shared by every diffusion system: the Lightning base module, EMA weights, atomic checkpoints."""

from .base import CHECKPOINT_KEY, DiffusionModule, NonFiniteLossError, load_net, lr_factor, read_checkpoint
from .checkpoint import AtomicCheckpointIO
from .ema import EMA

__all__ = ["CHECKPOINT_KEY", "EMA", "AtomicCheckpointIO", "DiffusionModule", "NonFiniteLossError", "load_net",
           "lr_factor", "read_checkpoint"]
