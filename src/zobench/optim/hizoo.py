"""HiZOO: diagonal-Hessian-informed zeroth-order optimisation (Zhao et al., "Second-Order
Fine-Tuning without Pain for LLMs: A Hessian Informed Zeroth-Order Optimizer", ICLR 2025).

Two rules, both the authors' (``rule``). ``rule="2025"`` (default): the OPT trainer of the 2025
code (Yanjun-Zhao/HiZOO @4f99055, trainer.py:482-516), Σ the diagonal Hessian estimate
(``Hessian_matrix``, initialised to ones, l.351), z ~ N(0, I):

    ℓ0 = L(θ),  ℓ± = L(θ ± ε z/√Σ)                                            (l.491-499, l.479)
    Σ' = (1-α) Σ + α · |ℓ+ + ℓ- - 2ℓ0| / (2ε²) · Σ ⊙ z²                        (l.507-510)
    θ ← θ - η ( (ℓ+ - ℓ-)/(2ε) · z/√Σ' + λ θ )                                 (l.512-513)

The update uses the NEW Σ' (the perturbation used the old Σ); an update with the old Σ would
differ by the factor (1 - α + α c z²)^(-1/2) per element, ≈ 1 at the default α = 1e-8.

``rule="2024"``: the RoBERTa-large trainer of the 2024 code, behind the paper's RoBERTa rows
(medium_models/src/trainer.py:620-646 @f5f0c45, perturbation l.244-249). Σ there scales the
perturbation up (an inverse-Hessian estimate), while the estimate averaged into it is a Hessian's:

    ℓ0 = L(θ),  ℓ± = L(θ ± ε √Σ ⊙ z)                                           (l.626-633, l.248)
    Σ' = (1-α) Σ + α · |ℓ+ + ℓ- - 2ℓ0| / (2ε²) · z²/Σ                          (l.640-643)
    θ ← θ - η ( (ℓ+ - ℓ-)/(2ε) · z ⊙ √Σ' + λ θ )                               (l.644-646)

With c = |ℓ+ + ℓ- - 2ℓ0|/(2ε²) and E z² = 1, Σ's fixed point is Σ ≈ √c, where the 2025 rule's
Σ' = Σ(1-α+αcz²) grows or shrinks geometrically. The reference passes an undefined ``seed`` to the
perturbation (l.628, l.632, l.635: NameError as written); it is read as the step's seed, the one
the update's z is drawn from (``random_seed``, l.637-639).

3 forward passes per step. State: Σ, one float32 buffer per parameter
(``state_buffers_per_param = 1``). Offloaded (``offload=cpu|disk``), Σ is stored beside its block
and lent with it on every arrival (the perturbation reads it in the forward); a step costs 4
reads and 2 writes of every block and its Σ: ℓ0, the ± pair (one mirrored call), and the update
of Σ and θ (``Engine.foreach``, once per param group) (docs/offload.md).
The reference defaults and the known faults of the authors' code: docs/algorithms.md, "HiZOO".

Deviations from the authors' code:

* Σ is float32 (the reference keeps it in the parameter dtype, l.351, fp16 with --load_float16,
  where with α ≈ 1e-8 the update falls below fp16 resolution and Σ never moves: HiZOO runs as MeZO).
* Forward passes: the authors' code runs a 4th forward pass per step, at the updated θ, for
  logging only (2025: l.515; 2024: ``loss_out``, l.649); zobench does not, so it counts 3 per
  step where a plot of the reference's passes counts 4. The step returns ℓ0.
* Weight decay goes to decay groups (``ndim >= 2``); the reference decays every parameter (l.513).
* α is constant (``hessian_smooth``); the reference can schedule it (Hessian_smooth_scheduler,
  l.356; constant in its scripts).
* z comes from per-parameter seeded generators, not ``torch.manual_seed`` + ``torch.normal``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine import Direction, Engine
from ..engine.sharded import local_tensor
from ._common import Closure, ZOOptimizer

#: ``rule`` -> the code it transcribes
RULES = ("2025", "2024")


@dataclass(frozen=True, eq=False)
class HessianScaledDirection(Direction):
    """u = z / √Σ (``inverse``: u = z ⊙ √Σ, the 2024 rule), Σ looked up per parameter id
    (``sigma.get(pid)``; None: u = z)."""

    sigma: _SigmaByPid | None = None
    inverse: bool = False

    def transform(self, pid: int, like: torch.Tensor, start: int, stop: int, z: torch.Tensor) -> torch.Tensor:
        sigma = None if self.sigma is None else self.sigma.get(pid)
        if sigma is None:
            return z
        # Σ^(∓1/2) of these elements only: no parameter-sized temporary
        piece = sigma.view(-1)[start:stop]
        return z.mul_(piece.sqrt() if self.inverse else piece.rsqrt())


class HiZOO(ZOOptimizer):
    """HiZOO: SPSA along z/√Σ with the diagonal Hessian estimate Σ (float32) learnt on the way.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ε (shared by all groups).
        hessian_smooth: α, the smoothing of Σ's moving average, in [0, 1] (reference: 1e-8).
        rule: ``"2025"`` (the OPT trainer's, default) or ``"2024"`` (the RoBERTa trainer's: perturb
            by √Σ z, update by √Σ' z); an integer 2024 / 2025 (as Hydra reads it) is accepted.
        weight_decay: λ (decay groups only).
        seed: base seed of this optimizer's direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 3
    state_buffers_per_param = 1
    hyperparameters = {"hessian_smooth": "unit"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        hessian_smooth: float = 1e-8,
        weight_decay: float = 0.0,
        rule: str | int = "2025",
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if str(rule) not in RULES or isinstance(rule, bool):
            raise ValueError(f"rule={rule!r}: allowed {', '.join(RULES)}")
        super().__init__(
            params,
            dict(lr=lr, eps=eps, hessian_smooth=hessian_smooth, weight_decay=weight_decay),
            engine=engine,
            seed=seed,
        )
        self.rule = str(rule)

    def _sigma(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "hessian" not in state:
            # dist.mode=sharded: this rank's shard of Σ only (``Piece.of`` / ``transform`` slice it locally)
            local = local_tensor(p)
            state["hessian"] = torch.ones_like(local, dtype=torch.float32, memory_format=torch.contiguous_format)
        return state["hessian"]

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        eps, alpha = self._shared("eps"), self._shared("hessian_smooth")
        step = self._advance()
        seed = self.direction(step).seed
        # Σ as used by this step's perturbation; Σ^(-1/2) is computed piece by piece when z is drawn
        direction = HessianScaledDirection(seed, sigma=_SigmaByPid(self), inverse=self.rule == "2024")
        loss_zero = float(closure())
        g, loss_plus, loss_minus = self._two_sided(closure, direction, eps)
        self.engine.restore(self._all_params)
        curvature = abs(loss_plus + loss_minus - 2 * loss_zero) / (2 * eps * eps)
        self._record(
            projected_grad=g, loss_plus=loss_plus, loss_minus=loss_minus, loss_zero=loss_zero, curvature=curvature
        )
        if math.isfinite(g) and math.isfinite(curvature):
            if self.rule == "2024":
                self._update_2024(seed, g, curvature, alpha)
                return torch.tensor(loss_zero)
            keep = torch.tensor(1 - alpha, dtype=torch.float32)  # 0-dim: broadcast to every piece
            for group, params in zip(self.param_groups, self._group_params):
                lr, decay = group["lr"], group["lr"] * group["weight_decay"]

                def apply(pid, p, piece):
                    sigma, z = piece.of(self._sigma(p)), piece.z
                    # Σ' = (1-α)Σ + α c Σ⊙z² = Σ ⊙ ((1-α) + α c z²), in one product (l.507-510)
                    scratch = torch.addcmul(keep, z, z, value=alpha * curvature)
                    sigma.mul_(scratch)
                    if decay:
                        piece.weights.mul_(1.0 - decay)
                    # θ ← θ - η g z/√Σ' with the NEW Σ' (l.512), u formed in float32, rounded once
                    piece.weights.addcmul_(torch.rsqrt(sigma, out=scratch), z, value=-lr * g)

                self.engine.foreach(params, Direction(seed), apply)
        return torch.tensor(loss_zero)

    def _update_2024(self, seed: int, g: float, curvature: float, alpha: float) -> None:
        """Σ' = (1-α)Σ + α c z²/Σ, then θ ← θ - η(g z √Σ' + λθ) (medium_models trainer.py:640-646)."""
        for group, params in zip(self.param_groups, self._group_params):
            lr, decay = group["lr"], group["lr"] * group["weight_decay"]

            def apply(pid, p, piece):
                sigma, z = piece.of(self._sigma(p)), piece.z
                # l.640-643: Hessian_temp = z²/Σ, estimator = c·Hessian_temp, Σ' = (1-α)Σ + α·estimator
                scratch = torch.mul(z, z).div_(sigma).mul_(curvature)
                sigma.mul_(1 - alpha).add_(scratch, alpha=alpha)
                if decay:
                    piece.weights.mul_(1.0 - decay)
                # l.644-646: θ ← θ - η g z √Σ', the step formed in float32 and rounded once
                piece.weights.addcmul_(torch.sqrt(sigma, out=scratch), z, value=-lr * g)

            self.engine.foreach(params, Direction(seed), apply)


class _SigmaByPid:
    """pid → Σ of that parameter (created at ones on first use)."""

    def __init__(self, optimizer: HiZOO) -> None:
        self._params = dict(optimizer._all_params)
        self._optimizer = optimizer

    def get(self, pid: int):
        p = self._params.get(pid)
        return None if p is None else self._optimizer._sigma(p)
