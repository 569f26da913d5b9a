"""SubZero: random subspace zeroth-order optimisation (Yu et al., "SubZero: Random Subspace
Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning", 2024).

For each weight matrix, U ∈ R^{m×r} and V ∈ R^{n×r} with orthonormal columns (QR of Gaussian
matrices), redrawn every ``refresh_steps`` steps; each step draws Z̃ ∈ R^{r×r} ~ N(0, I):

    Z = √(mn)/r · U Z̃ Vᵀ,   g = (L(θ+εZ) - L(θ-εZ)) / 2ε,   θ ← (1 - ηλ) θ - η g Z

(non-matrix parameters: Gaussian z). 2 forward passes per step, no state. This is the authors'
rule (zimingyy/SubZero @cf6effd, large_models/trainer.py): U, V from ``fast_svd_method_v2``
(l.1195-1205), redrawn when global_step % update_interval == 0 (l.894-908), Z = U z0 Vᵀ·√(mn/r²)
(l.756-758, l.987-989), θ ← θ - η g Z through SGD (l.324-325, l.995-996). The √(mn)/r factor gives Z's
entries unit variance on average, so ε means what it means for MeZO. Defaults: rank 8 and a
refresh every 2000 steps, the reference's run.py:94-95. See docs/algorithms.md, "SubZero".

Deviations from the authors' code: r is capped at min(m, n) (``rank_for``; the reference's
r × r core would not fit a thinner matrix); U, V, z0 are float32 draws from per-parameter seeded
generators, not the global ``torch.manual_seed`` stream; weight decay is decoupled, on decay groups
(the reference passes none to its SGD in its scripts).
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer
from ._lowrank import LowRankDirection, factor_seed, gaussian, rank_for


class SubZero(ZOOptimizer):
    """SubZero: SPSA in a random r × r subspace of each matrix, U and V refreshed periodically.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        rank: r, capped per matrix at min(m, n).
        refresh_steps: steps between two draws of the orthonormal U and V.
        weight_decay: λ (decoupled, decay groups only).
        seed: base seed of this optimizer's factors and direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    hyperparameters = {"rank": "count", "refresh_steps": "count"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        rank: int = 8,
        refresh_steps: int = 2000,
        weight_decay: float = 0.0,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, eps=eps, rank=rank, refresh_steps=refresh_steps, weight_decay=weight_decay),
            engine=engine,
            seed=seed,
        )

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        base, rank = self.param_groups[0]["seed"], self._shared("rank")
        period = (step - 1) // self._shared("refresh_steps")

        def factors(pid, like):
            m, n = like.shape
            r = rank_for(like, rank)
            u = torch.linalg.qr(gaussian(factor_seed(base, pid, 0, period), (m, r), like)).Q
            v = torch.linalg.qr(gaussian(factor_seed(base, pid, 1, period), (n, r), like)).Q
            core = gaussian(factor_seed(base, pid, 2, step), (r, r), like) * (math.sqrt(m * n) / r)
            return u @ core, v

        return self._spsa_sgd(closure, LowRankDirection(self.direction(step).seed, factors=factors))
