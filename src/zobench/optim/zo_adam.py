"""ZO-Adam: Adam's moments on the SPSA gradient estimate ĝ = g z (ZO-Bench, Zhang et al. ICML 2024;
Adam, Kingma & Ba 2015).

    g = (L(θ+εz) - L(θ-εz)) / 2ε,   ĝ = g z
    m ← β1 m + (1-β1) ĝ,   v ← β2 v + (1-β2) ĝ²,   θ ← θ - η (m̂ / (√v̂ + δ) + λ θ)
    with m̂ = m / (1-β1^t), v̂ = v / (1-β2^t)

2 forward passes per step. State: m and v, two float32 buffers per parameter: memory is
inference + 2× the parameters in fp32 (``state_buffers_per_param = 2``), which is what MeZO's
memory argument gives up; it is reported, not hidden.

The authors' step (ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py): ``param.grad = g z`` then
``torch.optim.Adam(lr)`` (torch's defaults β = (0.9, 0.999), δ = 1e-8) steps each parameter
(l.316, l.1063-1073): the rule above. Deviations: m and v are float32 whatever the parameter
dtype (``state_dtype``, below); weight decay is decoupled (their Adam has none; the sweeps use 0).
The ZO-Bench methods: docs/algorithms.md, "Related methods".

State precision. ZO-Bench's full-parameter ZO-Adam sweeps load the model with ``--load_bfloat16``,
so torch Adam keeps m and v in bfloat16 (``zeros_like(p)``). bfloat16 has 8 significant bits:
half an ulp is 2^-9 to 2^-8 of a value, more than the 1 - β2 = 1e-3 that v·β2 takes off, so v·β2
rounds back to v and v never decays. v then moves only when (1-β2) ĝ² reaches half an ulp of v,
and such an increment rounds to a whole ulp: v ratchets up. Early on, while the increments are
large against v (t ≲ 1/(1-β2)), both dtypes agree; later bf16's v̂ keeps growing where fp32's
settles at E[ĝ²], so η/√v̂, the effective learning rate, falls below fp32's step for step:
an lr tuned on those sweeps moves zobench's default (fp32) state further per step, by a
factor that grows with the step count. ``state_dtype="bfloat16"`` reproduces their state
(torch Adam's arithmetic in bf16, m by mul/add where torch lerps: v is bit for bit theirs);
results/zo_adam_state_dtype/ measures both on SmolLM2 and simulates v to 20k steps.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer

#: ``state_dtype`` -> the dtype m and v are kept (and Adam's arithmetic done) in
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ZOAdam(ZOOptimizer):
    """ZO-Adam: Adam's moments (float32) on the SPSA estimate g z.

    Args:
        params: parameters or param groups (``lr``, ``betas``, ``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε of the SPSA estimate (shared by all groups).
        betas: (β1, β2), each in [0, 1).
        adam_eps: δ, added to √v̂.
        weight_decay: λ (decoupled, decay groups only).
        state_dtype: ``float32`` (default) or ``bfloat16``: the dtype of m and v and of Adam's
            arithmetic on them. ``bfloat16`` reproduces torch Adam on a bf16 model (ZO-Bench's
            ``--load_bfloat16`` sweeps), where v never decays (module docstring).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    state_buffers_per_param = 2
    hyperparameters = {"betas": "betas", "adam_eps": "positive"}

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        eps: float = 1e-3,
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        state_dtype: str = "float32",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype={state_dtype!r}: allowed {', '.join(STATE_DTYPES)}")
        super().__init__(
            params,
            dict(lr=lr, eps=eps, betas=tuple(betas), adam_eps=adam_eps, weight_decay=weight_decay),
            engine=engine,
            seed=seed,
        )
        self.state_dtype = STATE_DTYPES[state_dtype]

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step, direction, g, loss_plus, loss_minus = self._spsa_estimate(closure)
        if math.isfinite(g):
            for group, params in zip(self.param_groups, self._group_params):
                lr, (beta1, beta2), delta = group["lr"], group["betas"], group["adam_eps"]
                decay = lr * group["weight_decay"]
                correction1, correction2 = 1 - beta1**step, 1 - beta2**step

                def apply(pid, p, piece):
                    m = piece.of(self._param_state(p, "exp_avg", self.state_dtype))
                    v = piece.of(self._param_state(p, "exp_avg_sq", self.state_dtype))
                    # bf16 state: the gradient is rounded first, as a bf16 model's param.grad is, and
                    # every op below rounds to bf16 (v·β2 rounds back to v: module docstring)
                    grad = piece.z.mul_(g).to(self.state_dtype)
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denominator = (v / correction2).sqrt_().add_(delta)
                    if decay:
                        piece.weights.mul_(1.0 - decay)
                    # θ ← θ - η m̂ / (√v̂ + δ), m̂ = m / (1 - β1^t), in one pass
                    piece.weights.addcdiv_(m, denominator, value=-lr / correction1)

                self.engine.foreach(params, direction, apply)
        return torch.tensor((loss_plus + loss_minus) / 2)
