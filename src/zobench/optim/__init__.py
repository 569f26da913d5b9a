"""Zeroth-order optimizers, one file per method, each a ``torch.optim.Optimizer``."""

from ._common import ZOOptimizer, decay_groups
from .mezo import MeZO

__all__ = ["MeZO", "ZOOptimizer", "decay_groups"]
