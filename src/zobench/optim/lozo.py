"""LOZO: low-rank ZO-SGD with lazy sampling (Chen et al., "Enhancing Zeroth-order Fine-tuning for
Language Models with Low-rank Structures", 2024).

For each weight matrix, Z_t = U_t V_kᵀ / √r with U_t ∈ R^{m×r} drawn fresh every step and
V ∈ R^{n×r} redrawn only every ``lazy_steps`` (ν) steps; non-matrix parameters use a Gaussian z:

    g = (L(θ+εZ) - L(θ-εZ)) / 2ε,   θ ← (1 - ηλ) θ - η g Z

2 forward passes per step, no state (U and V are regenerated from seeds).

Deviation from the authors' code: on the steps where V is redrawn, U is drawn exactly as on every
other step (the public code draws it inconsistently there).
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer
from ._lowrank import LowRankDirection, factor_seed, gaussian, rank_for


class LOZO(ZOOptimizer):
    forward_passes_per_step = 2

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, rank: int = 2, lazy_steps: int = 50,
                 weight_decay: float = 0.0, seed: int = 0, engine: Engine | None = None) -> None:
        if int(rank) < 1 or int(lazy_steps) < 1:
            raise ValueError(f"rank={rank}, lazy_steps={lazy_steps}: both must be >= 1")
        super().__init__(params, dict(lr=lr, eps=eps, rank=int(rank), lazy_steps=int(lazy_steps),
                                      weight_decay=weight_decay), engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        step = self._advance()
        base, rank = self.param_groups[0]["seed"], self._shared("rank")
        period = (step - 1) // self._shared("lazy_steps")  # V changes every ν steps

        def factors(pid, like):
            r = rank_for(like, rank)
            u = gaussian(factor_seed(base, pid, 0, step), (like.shape[0], r), like) / math.sqrt(r)
            v = gaussian(factor_seed(base, pid, 1, period), (like.shape[1], r), like)
            return u, v

        return self._spsa_sgd(closure, LowRankDirection(self.direction(step).seed, factors=factors))
