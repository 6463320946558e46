"""Training plumbing shared by every diffusion system: the Lightning base module and EMA weights."""

from .base import DiffusionModule, NonFiniteLossError, lr_factor
from .ema import EMA

__all__ = ["EMA", "DiffusionModule", "NonFiniteLossError", "lr_factor"]
