"""MeZO: memory-efficient zeroth-order SGD (Malladi et al., "Fine-Tuning Language Models with
Just Forward Passes", NeurIPS 2023, Algorithm 1).

Per step, with z ~ N(0, I) regenerated from the step seed (never stored):

    ℓ+ = L(θ + εz),   ℓ- = L(θ - εz),   g = (ℓ+ - ℓ-) / (2ε)          (SPSA, a scalar)
    θ ← θ - η (g z + λ θ)                                            (λ only on decay groups)

2 forward passes per step, no optimizer state. Memory: inference + the engine's working set.
The reference defaults and the variants in scope: docs/algorithms.md, "MeZO".
Variants (MeZO §2 and ZO-Bench): n-SPSA averages q directions, θ ← θ - (η/q) Σ_i g_i z_i
(2q passes); one-sided uses g_i = (L(θ+εz_i) - L(θ))/ε with one shared L(θ) (q+1 passes).

The authors' step (princeton-nlp/MeZO @552cb1b, large_models/trainer.py): θ + s·ε·z in place
(l.699-712; s = +1, -2, +1), g = (ℓ+ - ℓ-)/2ε (l.780), θ ← θ - η(g z + λθ) (l.791-806).
Deviations from the authors' code:

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
  (``decay_groups``); the authors exclude parameters whose name contains "bias"/"layer_norm"
  (l.803).
"""

from __future__ import annotations

import math

import torch

from ..engine import Direction, Engine
from ._common import Closure, ZOOptimizer


class MeZO(ZOOptimizer):
    """ZO-SGD with SPSA estimates, as in MeZO; n-SPSA and one-sided estimates as options.

    ``forward_passes_per_step``: 2 (the class default), 2q with n-SPSA, q+1 one-sided.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        weight_decay: λ (decoupled from g, applied as in the authors' code).
        distribution: ``gaussian`` (MeZO) or ``rademacher``.
        num_directions: q, the n-SPSA estimate averages q directions (MeZO §2, 2q passes).
        one_sided: g_i = (L(θ+εz_i) - L(θ))/ε, one shared L(θ) (q+1 passes).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step: float = 2  # DiZO, a subclass, declares an average
    hyperparameters = {"num_directions": "count"}
    splits_directions = True

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        distribution: str = "gaussian",
        num_directions: int = 1,
        one_sided: bool = False,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"distribution={distribution!r}: allowed gaussian, rademacher")
        defaults = dict(
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            distribution=distribution,
            num_directions=num_directions,
            one_sided=bool(one_sided),
        )
        super().__init__(params, defaults, engine=engine, seed=seed)
        q = int(num_directions)
        self.forward_passes_per_step = q + 1 if one_sided else 2 * q

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        if closure is None:
            raise ValueError("MeZO.step needs a closure that returns the batch loss")
        eps, q, one_sided = self._shared("eps"), self._shared("num_directions"), self._shared("one_sided")
        step = self._advance()
        distribution = self._shared("distribution")
        loss_zero = float(closure()) if one_sided else math.nan  # read only when one-sided

        def estimate(indices: list[int]) -> list[tuple[float, float, float]]:  # (g, ℓ+, ℓ-) per direction
            out = []
            for index in indices:
                direction = self.direction(step, index, distribution)
                if one_sided:
                    self.engine.perturb(self._all_params, direction, +eps)
                    loss_plus = float(closure())
                    out.append(((loss_plus - loss_zero) / eps, loss_plus, loss_zero))
                else:
                    out.append(self._two_sided(closure, direction, eps))
            return out

        # a direction-parallel run (dist.mode=directions) evaluates this rank's share, gathers the rest
        estimates: list[tuple[Direction, float, float, float]] = [  # (direction, g, ℓ+, ℓ-)
            (self.direction(step, index, distribution), *values)
            for index, values in enumerate(self._each_direction(q, estimate))
        ]

        projected_grad = sum(g for _, g, _, _ in estimates) / q
        self._record(projected_grad=projected_grad, loss_plus=estimates[-1][2], loss_minus=estimates[-1][3])
        if not all(math.isfinite(g) for _, g, _, _ in estimates):  # never write NaN/inf into the weights
            self.engine.restore(self._all_params)
            return torch.tensor(estimates[-1][2])
        if q > 1:  # every update must see the unperturbed θ (the decay multiplies θ itself)
            self.engine.restore(self._all_params)
        for index, (direction, g, _, _) in enumerate(estimates):
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                decay = lr * group["weight_decay"] if index == 0 else 0.0
                # q = 1: restore θ±εz and step in one sweep, θ ← (1-ηλ)θ - η g z
                self.engine.restore_and_update(params, direction, coeff=-lr * g / q, decay=decay)
        if one_sided:
            return torch.tensor(loss_zero)
        return torch.tensor(sum(lp + lm for _, _, lp, lm in estimates) / (2 * q))
