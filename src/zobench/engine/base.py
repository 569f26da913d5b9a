"""The engine contract every backend implements.

A ZO optimizer never touches weights itself. It asks the engine to

* ``perturb(params, direction, scale)``: make the next forward evaluate L(θ + scale·z);
* ``restore(params)``: make the next forward evaluate L(θ) again;
* ``update(params, direction, coeff, decay)``: θ ← (1 - decay)·θ + coeff·z  (the only write
  to the weights; ``decay`` = lr·weight_decay, ``coeff`` = -lr·g for SGD-like methods).

``params`` is a list of ``(pid, tensor)``: ``pid`` is the stable parameter id that seeds z, fixed
by the optimizer at construction (its index in the flat parameter list).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from .directions import Direction

ZOParams = Sequence[tuple[int, torch.Tensor]]


class Engine(ABC):
    """Base class: see the module docstring for the contract."""

    #: whether a step with lr=0 leaves every weight bit-identical in every dtype
    exact_restore: bool = False

    @abstractmethod
    def perturb(self, params: ZOParams, direction: Direction, scale: float) -> None: ...

    @abstractmethod
    def restore(self, params: ZOParams) -> None: ...

    @torch.no_grad()
    def update(self, params: ZOParams, direction: Direction, coeff: float, decay: float = 0.0) -> None:
        """θ ← (1 - decay)·θ + coeff·z, z regenerated from ``direction``.

        A zero coefficient is skipped rather than multiplied in, so lr=0 is an exact no-op
        (x + 0·z would turn a stored -0.0 into +0.0).
        """
        for pid, p in params:
            if decay != 0.0:
                p.mul_(1.0 - decay)
            if coeff != 0.0:
                p.add_(direction.sample(pid, p).to(p.dtype), alpha=coeff)
