"""ZO-SGD-Cons: zeroth-order SGD with a conservative (never worse on the batch) update (ZO-Bench:
Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark", ICML 2024, §3 and Appendix; code ``ZO-Bench/ZO-LLM``, ``ZO_Conserv``).

Per step, with z ~ N(0, I) regenerated from the step seed, ``base="sgd"`` (default, the paper's rule):

    ℓ0 = L(θ),  ℓ+ = L(θ + εz),  ℓ- = L(θ - εz),  g = (ℓ+ - ℓ-) / 2ε          (SPSA)
    ℓ↓ = L(θ - ηgz),  ℓ↑ = L(θ + ηgz)                                           (trial steps)
    θ ← (1 - ηλ) θ + c z,   c = -ηg if ℓ↓ is the least of (ℓ↓, ℓ0, ℓ↑),
                            c = 0   if ℓ0 is,   c = +ηg if ℓ↑ is

i.e. the SGD step is taken, reversed or rejected, whichever gives the lowest loss on the batch.
5 forward passes per step, no state. The trial points are evaluated as perturbations of θ
through the engine (scale ∓ηg along the same z), so with ``engine.mode=virtual`` the weights are
written once per step, and the accepted trial point is exactly the weights that get written.

``base="adamw"`` is the rule ZO-Bench's code runs (trainer.py:1251-1337 with its default
optimizer, Hugging Face's AdamW: optim/_adamw.py says why). ``update_params(s)`` (l.1288-1316) is
one AdamW step A(s·g z) on the gradient s·g z, moments and step count included, and nothing is
ever restored:

    θ1 = θ + A(g z),  ℓ1 = L(θ1);   θ2 = θ1 + A(-2 g z),  ℓ2 = L(θ2)         (l.1318-1323)
    if ℓ1 > ℓ0:  θ ← θ2 + A(g z) if ℓ0 < ℓ2 else θ2                            (l.1327-1329)
    else:        θ ← θ2 + A(2 g z) if ℓ1 < ℓ2 else θ2                          (l.1330-1332)

Under AdamW θ1, θ2 and the "return" steps are Adam-normalised moves, not ±ηgz: a rejection does
not restore θ, and a step makes 2 or 3 AdamW steps (m, v and t advance each time). 5 forward
passes per step; state m and v (two float32 buffers per parameter). The step returns ℓ0 (the
reference returns ℓ1, l.1337; the loss of the final point is not evaluated).

The authors' step: ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py:1251-1337 (``zo_conserv_step``;
the branch order at l.1327-1332). Deviations from the authors' code, ``base="sgd"`` (``adamw``
follows their branches exactly; its m and v are float32 whatever the parameter dtype):

* The authors move the weights θ → θ-ηgz → θ+ηgz → (θ or θ-ηgz) in place with an inner torch SGD
  optimizer (3 more parameter sweeps, ulp drift on a rejected step); here the trials are engine
  perturbations and the chosen step is applied once.
* Ties: the first minimum in the order (ℓ↓, ℓ0, ℓ↑) wins, so an equal loss keeps the SGD step,
  then the current weights; the authors' nested comparisons break some ties toward θ+ηgz.
* Weight decay λ (decoupled, decay groups only) is applied every step whatever the choice; the
  authors' inner SGD has none. The step returns the loss of the chosen point (the authors' code at
  @bf210fa returns ℓ↓, l.1337, whichever point it keeps).
* One learning rate for all groups (the trials are one perturbation of every parameter); the
  loop's decay groups share it.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._adamw import ADAMW_HYPERPARAMETERS, adamw_step, check_base
from ._common import Closure, ZOOptimizer


class ZOSGDCons(ZOOptimizer):
    """ZO-SGD with a conservative update: keep the best of θ - ηgz, θ, θ + ηgz on the batch.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group, ``lr`` only with
            ``adamw``).
        lr: learning rate η.
        eps: perturbation scale ε of the SPSA estimate.
        weight_decay: λ, decoupled, applied after the choice (``adamw``: after each AdamW step).
        base: ``sgd`` (the paper's rule, default) or ``adamw`` (ZO-Bench's code: the trial and
            final moves are Hugging Face AdamW steps, nothing restored).
        betas: AdamW's (β1, β2) (``adamw`` only).
        adam_eps: AdamW's δ (``adamw`` only).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 5
    hyperparameters = ADAMW_HYPERPARAMETERS

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        base: str = "sgd",
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        check_base(base)
        super().__init__(
            params,
            dict(lr=lr, eps=eps, weight_decay=weight_decay, betas=tuple(betas), adam_eps=adam_eps),
            engine=engine,
            seed=seed,
        )
        self.base = base
        self.state_buffers_per_param = 2 if base == "adamw" else 0  # AdamW's m and v

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        direction = self.direction(step)
        loss_zero = float(closure())
        g, loss_plus, loss_minus = self._two_sided(closure, direction, self._shared("eps"))
        if not math.isfinite(g):  # never write NaN/inf into the weights; no trial to make
            self.engine.restore(self._all_params)
            self._record(projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus, loss_zero=loss_zero)
            return torch.tensor(loss_zero)
        if self.base == "adamw":
            return self._adamw_step(closure, direction, g, loss_zero, loss_plus, loss_minus)
        lr = self._shared("lr")  # the trials perturb every parameter by one scale
        self.engine.perturb(self._all_params, direction, -lr * g)
        loss_descent = float(closure())
        self.engine.perturb(self._all_params, direction, +lr * g)
        loss_ascent = float(closure())
        # first minimum wins: the SGD step, then staying, then the reversed step
        candidates = [(loss_descent, -lr * g), (loss_zero, 0.0), (loss_ascent, lr * g)]
        choice = min(range(3), key=lambda i: candidates[i][0] if math.isfinite(candidates[i][0]) else math.inf)
        chosen_loss, coeff = candidates[choice]
        # choice: 0 the SGD step, 1 no step, 2 the reversed step
        self._record(
            projected_grad=g,
            loss_plus=loss_plus,
            loss_minus=loss_minus,
            loss_zero=loss_zero,
            loss_descent=loss_descent,
            loss_ascent=loss_ascent,
            choice=choice,
        )
        for group, params in zip(self.param_groups, self._group_params):
            self.engine.restore_and_update(params, direction, coeff=coeff, decay=lr * group["weight_decay"])
        return torch.tensor(chosen_loss)

    def _adamw_step(self, closure: Closure, direction, g: float, loss_zero: float, loss_plus, loss_minus):
        """ZO-Bench's branches (trainer.py:1318-1332), each ``update_params(s)`` one AdamW step on s·g z."""
        self.engine.restore(self._all_params)
        adamw_step(self, direction, g)
        loss_one = float(closure())
        adamw_step(self, direction, -2.0 * g)
        loss_two = float(closure())
        if loss_one > loss_zero:  # the descent trial was worse: back toward θ unless θ2 beats θ
            back = 1.0 if loss_zero < loss_two else None
            choice = 1 if back is not None else 2
        else:  # the descent trial was no worse: back to it unless θ2 beats it
            back = 2.0 if loss_one < loss_two else None
            choice = 0 if back is not None else 2
        if back is not None:
            adamw_step(self, direction, back * g)
        # choice: 0 toward the descent trial, 1 toward θ, 2 the reversed trial kept
        self._record(
            projected_grad=g,
            loss_plus=loss_plus,
            loss_minus=loss_minus,
            loss_zero=loss_zero,
            loss_descent=loss_one,
            loss_ascent=loss_two,
            choice=choice,
        )
        return torch.tensor(loss_zero)
