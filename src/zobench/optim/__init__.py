"""Zeroth-order optimizers, one file per method, each a ``torch.optim.Optimizer``.

Each method's class registers itself under its file's name when its module is imported
(``ZOOptimizer.__init_subclass__``, ``zobench.optim.registry``): after ``import zobench.optim``,
``methods()`` holds every one below, and the conformance suite runs over it. Adding a method:
docs/adding-a-method.md.
"""

from ._common import ZOOptimizer, decay_groups
from .dizo import DiZO
from .forward_gradient import ForwardGradient
from .fzoo import FZOO
from .hizoo import HiZOO
from .lezo import LeZO
from .lozo import LOZO
from .mezo import MeZO
from .mezo_svrg import MeZOSVRG
from .registry import methods
from .sparse_mezo import SparseMeZO
from .subzero import SubZero
from .tezo import TeZO
from .zo_adam import ZOAdam
from .zo_sgd_cons import ZOSGDCons
from .zo_sgd_momentum import ZOSGDMomentum
from .zo_sgd_sign import ZOSGDSign

__all__ = [
    "DiZO",
    "FZOO",
    "ForwardGradient",
    "HiZOO",
    "LOZO",
    "LeZO",
    "MeZO",
    "MeZOSVRG",
    "SparseMeZO",
    "SubZero",
    "TeZO",
    "ZOAdam",
    "ZOOptimizer",
    "ZOSGDCons",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "decay_groups",
    "methods",
]
