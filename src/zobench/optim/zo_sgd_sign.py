"""ZO-SGD-Sign: the SPSA step with the projected gradient replaced by its sign (ZO-Bench, Zhang et
al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark",
ICML 2024).

    g = (L(θ+εz) - L(θ-εz)) / 2ε,   ĝ = sign(g) z   (sign="elementwise": ĝ = sign(g z) = sign(g) sign(z))
    base="sgd" (default, the paper's rule):  θ ← (1 - ηλ) θ - η ĝ
    base="adamw" (ZO-Bench's code):         θ ← transformers.AdamW(θ, ĝ)   (optim/_adamw.py)

2 forward passes per step; no state with ``sgd``, m and v (two float32 buffers per parameter)
with ``adamw``.

The two bases. The paper and docs/algorithms.md ("Related methods") state the SGD rule: MeZO's
step with |g| normalised away, so every step has length η‖z‖ whatever the loss difference, and η
has to be ~|g| times MeZO's lr for steps of MeZO's size. ZO-Bench's code computes the same
ĝ = ``np.sign(projected_grad) * z`` (ZO-Bench/ZO-LLM @bf210fa, zo-bench/trainer.py:1055-1058, their
"signOpt_orig") but hands it as ``param.grad`` to ``self.optimizer.step()`` (l.1072-1073), which
for ``--trainer zo_sign_opt`` is Hugging Face's AdamW: run.py:74 defaults ``optimizer`` to
"adamw", trainer.py:315-330 swap the Trainer's AdamW only for the zo_adam / zo_sgd trainers or
``--optimizer adam|sgd``, and none of the zo_sign_opt sweep files passes ``--optimizer``. So in the
runs behind ZO-Bench's table the first step moves every element by ±η|z|/(|z| + δ/√(1-β2)) ≈ ±η
and later steps are Adam-normalised with momentum: their learning-rate grid is calibrated to
``base=adamw``, not to the SGD rule. "elementwise" is signSGD applied to the
estimate g z (ZO-signSGD, Liu et al., ICLR 2019), which their code keeps as a commented-out
alternative ("signOpt_mul_sign").

Deviations from the authors' code: with ``sgd`` the update is applied directly where their code
steps an inner optimizer (the same step for plain SGD); with ``adamw`` m and v are float32 whatever
the parameter dtype (theirs: the parameter's, bf16 with --load_bfloat16; see zo_adam.py for what
that does to v). At g = 0 (no information) only the weight decay acts (``sgd``) or AdamW steps on
ĝ = 0 (``adamw``: the momentum still moves θ), as ``np.sign(0) * z`` does in theirs.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._adamw import ADAMW_HYPERPARAMETERS, adamw_step, check_base
from ._common import Closure, ZOOptimizer

SIGNS = ("scalar", "elementwise")


def _sign(g: float) -> float:
    return 0.0 if g == 0.0 else math.copysign(1.0, g)


class ZOSGDSign(ZOOptimizer):
    """ZO-SGD-Sign: MeZO's step with sign(g) for g (or, elementwise, sign(g z)), by SGD or AdamW.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η (each step moves η‖z‖, or η per element with ``elementwise``).
        eps: perturbation scale ε (shared by all groups).
        weight_decay: λ (decoupled, decay groups only).
        sign: ``scalar`` (ZO-Bench's paper and code, default) or ``elementwise`` (ZO-signSGD).
        base: ``sgd`` (the paper's rule, default) or ``adamw`` (ZO-Bench's code: ĝ through
            Hugging Face's AdamW).
        betas: AdamW's (β1, β2) (``adamw`` only).
        adam_eps: AdamW's δ (``adamw`` only).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    hyperparameters = ADAMW_HYPERPARAMETERS

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        sign: str = "scalar",
        base: str = "sgd",
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if sign not in SIGNS:
            raise ValueError(f"sign={sign!r}: allowed {', '.join(SIGNS)}")
        check_base(base)
        super().__init__(
            params,
            dict(lr=lr, eps=eps, weight_decay=weight_decay, sign=sign, betas=tuple(betas), adam_eps=adam_eps),
            engine=engine,
            seed=seed,
        )
        self.base = base
        self.state_buffers_per_param = 2 if base == "adamw" else 0  # AdamW's m and v

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        if self.base == "adamw":
            step, direction, g, loss_plus, loss_minus = self._spsa_estimate(closure)
            if math.isfinite(g):  # ĝ = sign(g) z (or sign(g) sign(z)) as param.grad of AdamW
                adamw_step(self, direction, _sign(g), elementwise_sign=self._shared("sign") == "elementwise")
            return torch.tensor((loss_plus + loss_minus) / 2)
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
