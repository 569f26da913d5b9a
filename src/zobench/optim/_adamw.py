"""Hugging Face's AdamW on a ZO gradient estimate: the optimizer ZO-Bench's code runs by default.

ZO-Bench (ZO-Bench/ZO-LLM @bf210fa) hands every ZO gradient to ``self.optimizer``: run.py:74
defaults ``optimizer`` to ``adamw``; the Hugging Face Trainer builds its default optimizer
(trainer.py:290, ``create_optimizer_and_scheduler``; transformers 4.28.1 per requirements.txt,
``optim="adamw_hf"``: ``transformers.AdamW`` with β = (0.9, 0.999), δ = ``adam_epsilon`` = 1e-8,
``weight_decay`` from the command line, 0 in every sweep file); trainer.py:315-330 replace it only
for the ``zo_adam`` / ``zo_sgd`` trainers or ``--optimizer adam|sgd``. So ``zo_sign_opt``
(trainer.py:1055-1073) and ``zo_conserv`` (l.1288-1316) step ``transformers.AdamW`` with
``param.grad = ĝ``. Its step (transformers 4.28.1 optimization.py, ``AdamW.step``), t counting
AdamW steps:

    m ← β1 m + (1-β1) ĝ,   v ← β2 v + (1-β2) ĝ²
    θ ← θ - η √(1-β2^t)/(1-β1^t) · m / (√v + δ)        (δ outside the bias correction)
    θ ← θ - η λ θ                                       (decoupled, after the step)

Here m and v are float32 whatever the parameter dtype (as ZO-Adam's), and t is one counter for
all parameters (the reference's per-parameter counters move together: every parameter gets a
gradient at every call).
"""

from __future__ import annotations

import math

from ..engine import Direction

#: ``base`` of ZO-SGD-Sign and ZO-SGD-Cons: the paper's SGD rule, or the code's AdamW
BASES = ("sgd", "adamw")
#: the AdamW hyperparameters the two methods declare (used by ``base=adamw`` only)
ADAMW_HYPERPARAMETERS = {"betas": "betas", "adam_eps": "positive"}


def check_base(base: str) -> None:
    if base not in BASES:
        raise ValueError(f"base={base!r}: allowed {', '.join(BASES)}")


def adamw_step(optimizer, direction: Direction, coeff: float, elementwise_sign: bool = False) -> None:
    """One ``transformers.AdamW`` step of every parameter on ĝ = coeff·z (``elementwise_sign``:
    coeff·sign(z)), z of ``direction``; the step count lives in ``optimizer.state["adamw"]``."""
    counter = optimizer.state.setdefault("adamw", {"step": 0})
    counter["step"] += 1
    t = counter["step"]
    for group, params in zip(optimizer.param_groups, optimizer._group_params):
        lr, (beta1, beta2), delta = group["lr"], group["betas"], group["adam_eps"]
        step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        decay = lr * group["weight_decay"]

        def apply(pid, p, piece):
            m = piece.of(optimizer._param_state(p, "exp_avg"))
            v = piece.of(optimizer._param_state(p, "exp_avg_sq"))
            grad = (piece.z.sign_() if elementwise_sign else piece.z).mul_(coeff)
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            piece.weights.addcdiv_(m, v.sqrt().add_(delta), value=-step_size)
            if decay:  # p.add_(p, alpha=-lr·λ): the decay of the already stepped weights
                piece.weights.mul_(1.0 - decay)

        optimizer.engine.foreach(params, direction, apply)
