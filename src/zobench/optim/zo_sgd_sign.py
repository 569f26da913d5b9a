"""ZO-SGD-Sign: the SPSA step with the projected gradient replaced by its sign (ZO-Bench, Zhang et
al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark",
ICML 2024).

    g = (L(θ+εz) - L(θ-εz)) / 2ε
    sign="scalar" (default):   θ ← (1 - ηλ) θ - η sign(g) z
    sign="elementwise":        θ ← (1 - ηλ) θ - η sign(g z) = (1 - ηλ) θ - η sign(g) sign(z)

2 forward passes per step, no state.

The default is the rule of docs/algorithms.md ("Related methods") and the one ZO-Bench's code runs
(ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py:1055-1058, ``zo_sign_opt``:
``np.sign(projected_grad) * z`` stepped by SGD, l.1072-1073, their "signOpt_orig"): MeZO's step with |g|
normalised away, so every step has length η‖z‖ whatever the loss difference, and η has to be
~|g| times MeZO's lr for steps of MeZO's size. "elementwise" is signSGD applied to the estimate
g z (ZO-signSGD, Liu et al., ICLR 2019), which their code keeps as a commented-out alternative
("signOpt_mul_sign"): every element moves by exactly ±η.

Deviations from the authors' code: their sign(g) z goes through an inner ``torch.optim.SGD``
(``param.grad = sign(g) z; optimizer.step()``); here the update is applied directly, which is
the same step for plain SGD. At g = 0 (no information) only the weight decay acts, where
``np.sign(0) * z`` gives the same.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer

SIGNS = ("scalar", "elementwise")


def _sign(g: float) -> float:
    return 0.0 if g == 0.0 else math.copysign(1.0, g)


class ZOSGDSign(ZOOptimizer):
    """ZO-SGD-Sign: MeZO's step with sign(g) for g (or, elementwise, sign(g z)).

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η (each step moves η‖z‖, or η per element with ``elementwise``).
        eps: perturbation scale ε (shared by all groups).
        weight_decay: λ (decoupled, decay groups only).
        sign: ``scalar`` (ZO-Bench's code, default) or ``elementwise`` (ZO-signSGD).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        sign: str = "scalar",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if sign not in SIGNS:
            raise ValueError(f"sign={sign!r}: allowed {', '.join(SIGNS)}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, sign=sign), engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        if self._shared("sign") == "scalar":  # MeZO's fused restore-and-update, with sign(g) for g
            return self._spsa_sgd(closure, self.direction(self._advance()), gain=_sign)
        step, direction, g, loss_plus, loss_minus = self._spsa_estimate(closure)
        if math.isfinite(g):
            sign_g = _sign(g)
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
