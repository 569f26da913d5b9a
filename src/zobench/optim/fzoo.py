"""FZOO: fast zeroth-order optimisation with N one-sided Rademacher directions and a step
normalised by the spread of the losses ("FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large
Language Models towards Adam-Scale Speed", 2025).

    u_i ∈ {-1, +1}^d (i = 1..N),  ℓ0 = L(θ),  ℓ_i = L(θ + ε u_i),  σ = std(ℓ_1 .. ℓ_N)
    θ ← (1 - ηλ) θ - (η / (N σ)) Σ_i ((ℓ_i - ℓ0)/ε) u_i

N+1 forward passes per step, no state. The N perturbed evaluations run one after another here;
their batched evaluation (one forward of N perturbed models) needs the virtual engine's batched
mode (not built yet).

Choices, stated: ``std_ddof=1`` (the paper's sample std; the authors' code uses the population
std, ``std_ddof=0``); ``eps_in_lr=false`` divides by ε as the paper writes (the authors' code folds
1/ε into the learning rate: ``eps_in_lr=true``). If σ = 0 (all ℓ_i equal) only weight decay acts.
"""

from __future__ import annotations

import math
import statistics

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer


class FZOO(ZOOptimizer):
    def __init__(self, params, lr: float = 1e-5, eps: float = 1e-3, num_directions: int = 8, std_ddof: int = 1,
                 eps_in_lr: bool = False, weight_decay: float = 0.0, seed: int = 0,
                 engine: Engine | None = None) -> None:
        if int(num_directions) < 2:
            raise ValueError(f"num_directions={num_directions}: FZOO needs >= 2 to estimate a spread")
        if std_ddof not in (0, 1):
            raise ValueError(f"std_ddof={std_ddof}: 0 (population) or 1 (sample)")
        super().__init__(params, dict(lr=lr, eps=eps, num_directions=int(num_directions), std_ddof=std_ddof,
                                      eps_in_lr=bool(eps_in_lr), weight_decay=weight_decay),
                         engine=engine, seed=seed)
        self.forward_passes_per_step = int(num_directions) + 1

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        eps, n = self._shared("eps"), self._shared("num_directions")
        step = self._advance()
        loss_zero = float(closure())
        directions, losses = [], []
        for index in range(n):
            direction = self.direction(step, index, "rademacher")
            self.engine.perturb(self._all_params, direction, eps)
            losses.append(float(closure()))
            directions.append(direction)
        self.engine.restore(self._all_params)
        spread = (statistics.stdev if self._shared("std_ddof") == 1 else statistics.pstdev)(losses)
        self._record(loss_zero=loss_zero, loss_std=spread, projected_grad=(sum(losses) / n - loss_zero) / eps)
        if not (math.isfinite(spread) and all(math.isfinite(l) for l in losses) and math.isfinite(loss_zero)):
            return torch.tensor(loss_zero)
        scale = 1.0 if self._shared("eps_in_lr") else 1.0 / eps
        for index, (direction, loss) in enumerate(zip(directions, losses)):
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                decay = lr * group["weight_decay"] if index == 0 else 0.0
                # σ = 0 (all losses equal): no usable direction, only the decay acts
                coeff = -lr / (n * spread) * (loss - loss_zero) * scale if spread > 0 else 0.0
                self.engine.update(params, direction, coeff=coeff, decay=decay)
        return torch.tensor(loss_zero)
