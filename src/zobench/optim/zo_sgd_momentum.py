"""ZO-SGD-MMT: ZO-SGD with heavy-ball momentum (ZO-Bench, Zhang et al., "Revisiting Zeroth-Order
Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark", ICML 2024).

    g = (L(θ+εz) - L(θ-εz)) / 2ε,   m ← β m + g z,   θ ← (1 - ηλ) θ - η m

2 forward passes per step; state: m, one float32 buffer per parameter (memory: inference + 1×
parameters in fp32, reported as ``state_buffers_per_param = 1``).

The authors' step (ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py): ``param.grad = g z`` then
``torch.optim.SGD(lr, momentum=β).step()`` per parameter (l.321, l.1063-1073), i.e. torch's
heavy ball m ← β m + g z (no dampening), θ ← θ - η m: the rule above.

Deviations from ZO-Bench's code: m is kept in float32 whatever the parameter dtype; weight decay is
decoupled (their SGD has none; the sweeps use 0). The ZO-Bench methods: docs/algorithms.md,
"Related methods".
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer


class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD-MMT: heavy-ball momentum (float32) on the SPSA estimate g z.

    Args:
        params: parameters or param groups (``lr``, ``momentum``, ``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        momentum: β in [0, 1).
        weight_decay: λ (decoupled, decay groups only).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    state_buffers_per_param = 1
    hyperparameters = {"momentum": "fraction"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay), engine=engine, seed=seed
        )

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step, direction, g, loss_plus, loss_minus = self._spsa_estimate(closure)
        if math.isfinite(g):
            for group, params in zip(self.param_groups, self._group_params):
                lr, beta, decay = group["lr"], group["momentum"], group["lr"] * group["weight_decay"]

                def apply(pid, p, piece):
                    m = piece.of(self._param_state(p, "momentum"))
                    m.mul_(beta).add_(piece.z, alpha=g)
                    if decay:
                        piece.weights.mul_(1.0 - decay)
                    piece.weights.add_(m.to(p.dtype), alpha=-lr)

                self.engine.foreach(params, direction, apply)
        return torch.tensor((loss_plus + loss_minus) / 2)
