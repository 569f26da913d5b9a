"""LOZO: low-rank ZO-SGD with lazy sampling (Chen et al., "Enhancing Zeroth-order Fine-tuning for
Language Models with Low-rank Structures", ICLR 2025, arXiv 2410.07698).

The authors' rule (optsuite/LOZO @5d1ade5, large_models/LOZOtrainer.py): for each weight matrix
W ∈ R^{m×n}, Z_t = U_t V_kᵀ with U_t ∈ R^{m×r} drawn fresh every step (l.715) and V ∈ R^{n×r}
redrawn only every ``lazy_steps`` (ν) steps (l.710-711), both N(0, 1) with no 1/√r; non-matrix
parameters use a Gaussian z (l.718):

    g = (L(θ+εZ) - L(θ-εZ)) / 2ε,   θ ← (1 - ηλ) θ - η g Z          (l.790, l.812-821)

The entries of Z have variance r, so at a fixed η the step grows ∝ r, and the published grid
(lr 1e-6/1e-7, ε 1e-3, r ∈ {1, 2}, ν ∈ {50, 100}) assumes it. (With Z divided by √r, g would be
measured along Z/√r and the update move along Z/√r: the step at lr η would be this rule's step at
lr η/r.) See docs/algorithms.md, "LOZO".

2 forward passes per step, no state (U and V are regenerated from seeds).

Deviations from the authors' code:

* On the steps where V is redrawn the reference's perturbation draws V, then U, from the step seed,
  but its update (l.803-809) draws only U from that seed: the update's U is not the perturbation's
  (on those steps it moves along a direction it never measured). Here U and V have their own
  seeds, so the update uses exactly the perturbation's Z.
* The reference draws in the parameter dtype from the global RNG (``torch.manual_seed``); here
  U, V are float32 from per-parameter generators.
* r is used as given even when it exceeds min(m, n), as in the reference.
* Weight decay goes to decay groups (``ndim >= 2``); the reference excludes parameters by name
  ("bias", "layer_norm", "layernorm", l.811-818).
"""

from __future__ import annotations

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer
from ._lowrank import LowRankDirection, factor_seed, gaussian


class LOZO(ZOOptimizer):
    """LOZO: SPSA along Z = U Vᵀ per matrix, U fresh every step, V redrawn every ν steps.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        rank: r, the rank of U and V (used as given, also above min(m, n)).
        lazy_steps: ν, steps between two draws of V.
        weight_decay: λ (decay groups only).
        seed: base seed of this optimizer's factors and direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    hyperparameters = {"rank": "count", "lazy_steps": "count"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        rank: int = 2,
        lazy_steps: int = 50,
        weight_decay: float = 0.0,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, eps=eps, rank=rank, lazy_steps=lazy_steps, weight_decay=weight_decay),
            engine=engine,
            seed=seed,
        )

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        base, rank = self.param_groups[0]["seed"], self._shared("rank")
        period = (step - 1) // self._shared("lazy_steps")  # V changes every ν steps (l.710: step % ν == 0)

        def factors(pid, like):  # Z = U Vᵀ, no 1/√r (l.715-716)
            u = gaussian(factor_seed(base, pid, 0, step), (like.shape[0], rank), like)
            v = gaussian(factor_seed(base, pid, 1, period), (like.shape[1], rank), like)
            return u, v

        return self._spsa_sgd(closure, LowRankDirection(self.direction(step).seed, factors=factors))
