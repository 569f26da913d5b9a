"""Forward gradient: the directional derivative along a random z by forward-mode AD (ZO-Bench:
Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark", ICML 2024, "Forward-Grad"; Baydin et al., "Gradients without Backpropagation", 2022).

Per step, with z ~ N(0, I) regenerated from the step seed:

    d = ∇L(θ)·z          (one forward pass on dual numbers (θ, z): the loss's tangent)
    θ ← (1 - ηλ) θ - η d z

E[d z] = E[z zᵀ] ∇L = ∇L: an unbiased gradient estimate, the ε → 0 limit of MeZO's SPSA estimate
without its finite-difference error. No backward pass and no stored graph, so the memory stays
near inference: the tangent of each live activation (about 2× activations) and z of one module's
parameters at a time.

Cost: declared as 1 forward pass per step (one call of the model), but a dual forward does the
primal and the tangent computation together, so it costs a few forwards' worth of arithmetic (the
README's method table gives the measured ratio), plus z for every parameter, as MeZO's step does.
Attention runs on SDPA's math kernel during the dual forward (the fused kernels have no
forward-AD formula), which costs memory quadratic in the sequence length.

Needs ``engine.mode=virtual``: the engine puts ``fwAD.make_dual(θ, z)`` in each module's
parameter slot for the duration of its forward.

Deviations from the authors' code (ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py:1357-1424,
``forward_grad_step``: ``torch.func.jvp`` over ``functional_call`` of the whole model, then
θ ← θ - η(v·jvp + λθ), l.1409-1412): the same quantity, computed by the engine's per-module
swap, so z is the engine's seeded direction (regenerated for the update, never stored) and no
copy of the parameter dict is built; weight decay is decoupled and applied to decay groups only.
A non-finite derivative skips the update.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD

from ..engine import Engine
from ._common import Closure, ZOOptimizer


class ForwardGradient(ZOOptimizer):
    """SGD on forward gradients d z, d = ∇L·z by forward-mode AD.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        weight_decay: λ (decoupled, decay groups only).
        seed: base seed of this optimizer's direction stream.
        engine: a ``VirtualEngine`` built on the model the closure evaluates.
    """

    forward_passes_per_step = 1

    def __init__(
        self, params, lr: float = 1e-6, weight_decay: float = 0.0, seed: int = 0, engine: Engine | None = None
    ) -> None:
        if engine is None or not engine.supports_dual:
            raise ValueError(
                "the forward gradient evaluates the model on dual numbers inside its modules: "
                "it needs engine.mode=virtual (VirtualEngine)"
            )
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), engine=engine, seed=seed)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        direction = self.direction(step)
        with self.engine.dual(self._all_params, direction):
            primal, tangent = fwAD.unpack_dual(closure())
            if tangent is None:  # a constant loss still has a (zero) tangent once a module ran
                raise RuntimeError(
                    "forward gradient: the loss carries no tangent; the closure must evaluate "
                    "the model (parameters read outside their module's forward are not seen)"
                )
            loss, derivative = float(primal), float(tangent)
        self._record(projected_grad=derivative, loss=loss)
        if math.isfinite(derivative):  # never write NaN/inf into the weights
            for group, params in zip(self.param_groups, self._group_params):
                lr = group["lr"]
                self.engine.update(params, direction, coeff=-lr * derivative, decay=lr * group["weight_decay"])
        return torch.tensor(loss)
