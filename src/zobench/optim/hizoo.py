"""HiZOO: diagonal-Hessian-informed zeroth-order optimisation (Zhao et al., "Second-Order
Fine-Tuning without Pain for LLMs: A Hessian Informed Zeroth-Order Optimizer", ICLR 2025).

Per step, Σ the diagonal Hessian estimate (initialised to ones), z ~ N(0, I), u = z / √Σ:

    ℓ0 = L(θ),  ℓ+ = L(θ + εu),  ℓ- = L(θ - εu)
    Σ ← (1-α) Σ + α · |ℓ+ + ℓ- - 2ℓ0| / (2ε²) · Σ ⊙ z²
    θ ← θ - η ( (ℓ+ - ℓ-)/(2ε) · u + λ θ )                      (u with the Σ of the perturbation)

3 forward passes per step. State: Σ, one float32 buffer per parameter
(``state_buffers_per_param = 1``).

Deviations from the authors' code: Σ is float32 (the reference keeps it in fp16 where, with
α ≈ 1e-8, the update falls below fp16 resolution and Σ never moves, so HiZOO runs as MeZO);
no 4th, logging-only forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine import Direction, Engine
from ._common import Closure, ZOOptimizer


@dataclass(frozen=True, eq=False)
class HessianScaledDirection(Direction):
    """u = z / √Σ, Σ looked up per parameter id (``sigma.get(pid)``; None: u = z)."""

    sigma: object = None

    def transform(self, pid: int, like: torch.Tensor, start: int, stop: int, z: torch.Tensor) -> torch.Tensor:
        sigma = None if self.sigma is None else self.sigma.get(pid)
        # Σ^(-1/2) of these elements only: no parameter-sized temporary
        return z if sigma is None else z.mul_(sigma.view(-1)[start:stop].rsqrt())


class HiZOO(ZOOptimizer):
    forward_passes_per_step = 3
    state_buffers_per_param = 1

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, hessian_smooth: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0, engine: Engine | None = None) -> None:
        if not 0.0 <= hessian_smooth <= 1.0:
            raise ValueError(f"hessian_smooth={hessian_smooth}: must be in [0, 1]")
        super().__init__(params, dict(lr=lr, eps=eps, hessian_smooth=hessian_smooth, weight_decay=weight_decay),
                         engine=engine, seed=seed)

    def _sigma(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "hessian" not in state:
            state["hessian"] = torch.ones_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
        return state["hessian"]

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        eps, alpha = self._shared("eps"), self._shared("hessian_smooth")
        step = self._advance()
        seed = self.direction(step).seed
        # Σ as used by this step's perturbation; Σ^(-1/2) is computed piece by piece when z is drawn
        direction = HessianScaledDirection(seed, sigma=_SigmaByPid(self))
        loss_zero = float(closure())
        g, loss_plus, loss_minus = self._two_sided(closure, direction, eps)
        self.engine.restore(self._all_params)
        curvature = abs(loss_plus + loss_minus - 2 * loss_zero) / (2 * eps * eps)
        self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus, loss_zero=loss_zero,
                     curvature=curvature)
        if math.isfinite(g) and math.isfinite(curvature):
            keep = torch.tensor(1 - alpha, dtype=torch.float32)  # 0-dim: broadcast to every piece
            for group, params in zip(self.param_groups, self._group_params):
                lr, decay = group["lr"], group["lr"] * group["weight_decay"]

                def apply(pid, p, piece):
                    sigma, z = piece.of(self._sigma(p)), piece.z
                    scratch = sigma.rsqrt()  # Σ^(-1/2) of the old Σ: u = z Σ^(-1/2), this step's perturbation
                    if decay:
                        piece.weights.mul_(1.0 - decay)
                    # θ ← θ - η g u in one pass (u formed in float32, rounded once into θ's dtype)
                    piece.weights.addcmul_(scratch, z, value=-lr * g)
                    # Σ ← (1-α)Σ + α c Σ⊙z² = Σ ⊙ ((1-α) + α c z²), from the old Σ in one product
                    sigma.mul_(torch.addcmul(keep, z, z, value=alpha * curvature, out=scratch))

                self.engine.foreach(params, Direction(seed), apply)
        return torch.tensor(loss_zero)


class _SigmaByPid:
    """pid → Σ of that parameter (created at ones on first use)."""

    def __init__(self, optimizer: HiZOO) -> None:
        self._params = dict(optimizer._all_params)
        self._optimizer = optimizer

    def get(self, pid: int):
        p = self._params.get(pid)
        return None if p is None else self._optimizer._sigma(p)
