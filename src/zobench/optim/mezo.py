"""MeZO: memory-efficient zeroth-order SGD (Malladi et al., "Fine-Tuning Language Models with
Just Forward Passes", NeurIPS 2023, Algorithm 1).

Per step, with z ~ N(0, I) regenerated from the step seed (never stored):

    ℓ+ = L(θ + εz),   ℓ- = L(θ - εz),   g = (ℓ+ - ℓ-) / (2ε)          (SPSA, a scalar)
    θ ← θ - η (g z + λ θ)                                            (λ only on decay groups)

2 forward passes per step, no optimizer state. Memory: inference + the engine's working set.

Deviations from the authors' code (princeton-nlp/MeZO, ``trainer.py``):

* z comes from a per-parameter generator seeded by (step seed, parameter id), not from
  ``torch.manual_seed`` + ``torch.normal`` on the global RNG, so it does not depend on parameter
  order and does not disturb any other random stream.
* With ``engine.mode=virtual`` the weights are not moved during the estimate, so they do not
  drift; the authors' in-place +ε, -2ε, +ε sequence (``engine.mode=inplace``) changes the
  weights by a few ulps per step even with lr=0.
* The returned (logged) loss is (ℓ+ + ℓ-)/2, an O(ε²) estimate of L(θ); the authors log ℓ+.
* A non-finite projected gradient (NaN/inf loss) skips the update instead of writing NaN into
  every weight; the loop's ``train.on_divergence`` policy decides whether the run goes on.
* Weight decay is applied to parameters with ``ndim >= 2`` when the loop builds the groups
  (``decay_groups``); the authors exclude parameters whose name contains "bias"/"layer_norm".
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer


class MeZO(ZOOptimizer):
    """ZO-SGD with two-sided SPSA estimates, as in MeZO.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        weight_decay: λ (decoupled from g, applied as in the authors' code).
        distribution: ``gaussian`` (MeZO) or ``rademacher``.
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 distribution: str = "gaussian", seed: int = 0, engine: Engine | None = None) -> None:
        if lr < 0:
            raise ValueError(f"lr={lr}: must be >= 0")
        if eps <= 0:
            raise ValueError(f"eps={eps}: must be > 0")
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, distribution=distribution)
        super().__init__(params, defaults, engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("MeZO.step needs a closure that returns the batch loss")
        eps = self._shared("eps")
        step = self._advance()
        direction = self.direction(step, distribution=self._shared("distribution"))

        self.engine.perturb(self._all_params, direction, +eps)
        loss_plus = float(closure())
        self.engine.perturb(self._all_params, direction, -eps)
        loss_minus = float(closure())

        projected_grad = (loss_plus - loss_minus) / (2 * eps)
        self._record(projected_grad=projected_grad, loss_plus=loss_plus, loss_minus=loss_minus)
        if not math.isfinite(projected_grad):  # never write NaN/inf into the weights
            self.engine.restore(self._all_params)
            return torch.tensor((loss_plus + loss_minus) / 2)
        for group, params in zip(self.param_groups, self._group_params):
            lr = group["lr"]  # restore θ-εz and step, one sweep: θ ← (1-ηλ)θ - ηg z
            self.engine.restore_and_update(params, direction, coeff=-lr * projected_grad,
                                           decay=lr * group["weight_decay"])
        return torch.tensor((loss_plus + loss_minus) / 2)
