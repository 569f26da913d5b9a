"""Low-rank perturbations of weight matrices, shared by TeZO, LOZO and SubZero.

A ``LowRankDirection`` gives every matrix parameter (ndim == 2) a perturbation Z = A Bᵀ of rank r
built by the method's ``factors(pid, like) -> (A, B)`` from seeded draws, and every other
parameter a plain Gaussian z. Factors are regenerated from seeds when needed, never stored, so the
memory stays at inference (methods keep only r-dimensional state). Z is scaled so that its entries
have unit variance, like a Gaussian z: ε and η keep their meaning across methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..engine import Direction, mix_seed


def gaussian(seed: int, shape, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    return torch.randn(shape, generator=gen, device=like.device, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class LowRankDirection(Direction):
    factors: Callable | None = field(default=None)

    def sample(self, pid: int, like: torch.Tensor) -> torch.Tensor:
        if like.ndim != 2 or self.factors is None:
            return super().sample(pid, like)
        a, b = self.factors(pid, like)
        return a @ b.T


def rank_for(like: torch.Tensor, rank: int) -> int:
    return max(1, min(rank, *like.shape))


def factor_seed(*parts: int) -> int:
    return mix_seed(0x10F4C7, *parts)
