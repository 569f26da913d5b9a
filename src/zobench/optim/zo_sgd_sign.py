"""ZO-SGD-Sign: sign of the ZO gradient estimate (ZO-Bench, Zhang et al. ICML 2024; signSGD,
Bernstein et al. 2018, on the SPSA estimate).

    g = (L(θ+εz) - L(θ-εz)) / 2ε,   θ ← (1 - ηλ) θ - η sign(g z) = (1 - ηλ) θ - η sign(g) sign(z)

2 forward passes per step, no state.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer


class ZOSGDSign(ZOOptimizer):
    forward_passes_per_step = 2

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, engine: Engine | None = None) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        step, direction, g, loss_plus, loss_minus = self._spsa_estimate(closure)
        if math.isfinite(g):
            sign_g = 0.0 if g == 0.0 else math.copysign(1.0, g)
            for group, params in zip(self.param_groups, self._group_params):
                lr, decay = group["lr"], group["lr"] * group["weight_decay"]
                if sign_g == 0.0:  # no gradient information: only the decay acts
                    self.engine.update(params, direction, coeff=0.0, decay=decay)
                    continue

                def apply(pid, p, piece):
                    if decay:
                        piece.weights.mul_(1.0 - decay)
                    piece.weights.add_(piece.z.sign_().to(p.dtype), alpha=-lr * sign_g)

                self.engine.foreach(params, direction, apply)
        return torch.tensor((loss_plus + loss_minus) / 2)
