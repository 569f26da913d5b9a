"""Sparse-MeZO: perturb and update only the small-magnitude weights (Liu et al., "Sparse MeZO:
Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning", 2024).

For every matrix θ_l: h_l = the (1 - s)-quantile of |θ_l| (s = ``sparsity``, the fraction left
out), m_l = 1[|θ_l| ≤ h_l], ẑ = m ⊙ z; vectors (biases, norms) are perturbed densely.

    g = (L(θ+εẑ) - L(θ-εẑ)) / 2ε,   θ ← (1 - ηλ) θ - η g ẑ

2 forward passes per step. The mask is recomputed from the current θ whenever z is drawn (one
threshold per matrix per step is all that is kept), so memory stays at inference. That needs
the unperturbed θ at every draw: ``engine.mode=virtual`` (in-place perturbation would compute
the mask of θ+εz).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..engine import Direction, Engine, InPlaceEngine
from ._common import Closure, ZOOptimizer


@dataclass(frozen=True, eq=False)
class MaskedDirection(Direction):
    """ẑ = 1[|θ| ≤ h] ⊙ z with the per-parameter thresholds h of this step."""

    thresholds: dict = field(default_factory=dict)

    def transform(self, pid: int, like: torch.Tensor, start: int, stop: int, z: torch.Tensor) -> torch.Tensor:
        h = self.thresholds.get(pid)
        # the mask of these elements only, from the unperturbed θ (virtual mode): nothing stored
        return z if h is None else z.mul_(like.reshape(-1)[start:stop].abs() <= h)


def magnitude_threshold(p: torch.Tensor, sparsity: float) -> float:
    """The (1 - sparsity)-quantile of |p| (kthvalue: torch.quantile refuses > 16M elements)."""
    flat = p.detach().abs().flatten().float()
    k = max(1, min(flat.numel(), math.ceil((1.0 - sparsity) * flat.numel())))
    return float(flat.kthvalue(k).values)


class SparseMeZO(ZOOptimizer):
    forward_passes_per_step = 2

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, sparsity: float = 0.75,
                 weight_decay: float = 0.0, seed: int = 0, engine: Engine | None = None) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity}: must be in [0, 1)")
        if engine is None or isinstance(engine, InPlaceEngine):
            raise ValueError("Sparse-MeZO recomputes its mask from the unperturbed weights: it needs "
                             "engine.mode=virtual (VirtualEngine)")
        super().__init__(params, dict(lr=lr, eps=eps, sparsity=sparsity, weight_decay=weight_decay),
                         engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        step = self._advance()
        sparsity = self._shared("sparsity")
        thresholds = {pid: magnitude_threshold(p, sparsity) for pid, p in self._all_params if p.ndim >= 2}
        return self._spsa_sgd(closure, MaskedDirection(self.direction(step).seed, thresholds=thresholds))
