"""TeZO: temporally low-rank zeroth-order perturbations (Sun et al., "TeZO: Empowering the
Low-Rankness on the Temporal Dimension in the Zeroth-Order Optimization for Fine-tuning LLMs", 2025).

Each weight matrix W ∈ R^{m×n} gets factors U ∈ R^{m×r}, V ∈ R^{n×r}, drawn once (from the
optimizer seed and the parameter id) and kept for the whole run; each step draws τ_t ~ N(0, I_r):

    Z_t = U diag(τ_t) Vᵀ,   κ = (L(θ+ρZ) - L(θ-ρZ)) / 2ρ,   W ← W - η κ Z_t
    (non-matrix parameters: plain Gaussian z, MeZO's update)

so the perturbations over time form a rank-r CP tensor. Variants keep moments on the
r-dimensional τ only (that is the memory claim): TeZO-m, m ← β m + κ τ and Z = U diag(m) Vᵀ;
TeZO-Adam, Adam moments on κ τ. 2 forward passes per step; state: r numbers per matrix.

Choices, stated (no public code): one CP rank r for every matrix (``rank``; it may exceed
min(m, n): the r slices u_k v_kᵀ span an r-dimensional space of updates),
U, V Gaussian N(0, 1) (not orthonormalised), Z = U diag(τ) Vᵀ with no normalisation, as the paper's
formula writes it (Sun et al. 2025, the equation of Z_t; docs/algorithms.md, "TeZO"): entries of Z
have variance r, so at a fixed η the step grows ∝ r (with Z divided by √r the step at lr η would be
this rule's at lr η/r). Non-matrix parameters follow MeZO (with momentum / Adam not applied to
them). No public code exists, so there is no reference transcription to match.
"""

from __future__ import annotations

import math

import torch

from ..engine import Engine
from ._common import Closure, ZOOptimizer
from ._lowrank import LowRankDirection, factor_seed, gaussian

VARIANTS = ("plain", "momentum", "adam")


class TeZO(ZOOptimizer):
    """TeZO: SPSA along Z_t = U diag(τ_t) Vᵀ with U, V fixed per matrix; moments on τ only.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        lr: learning rate η.
        eps: perturbation scale ρ (shared by all groups).
        rank: r, the CP rank of every matrix's perturbations (may exceed min(m, n)).
        variant: ``plain`` (ZO-SGD), ``momentum`` (TeZO-m) or ``adam`` (TeZO-Adam).
        momentum: β of TeZO-m, in [0, 1).
        betas: (β1, β2) of TeZO-Adam, each in [0, 1).
        adam_eps: δ of TeZO-Adam.
        weight_decay: λ (decay groups only).
        seed: base seed of this optimizer's factors and direction stream.
        engine: perturbation engine; defaults to the in-place torch engine.
    """

    forward_passes_per_step = 2
    hyperparameters = {"rank": "count", "momentum": "fraction", "betas": "betas", "adam_eps": "positive"}

    def __init__(
        self,
        params,
        lr: float = 1e-6,
        eps: float = 1e-3,
        rank: int = 8,
        variant: str = "plain",
        momentum: float = 0.9,
        betas=(0.9, 0.999),
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
        engine: Engine | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}: allowed {', '.join(VARIANTS)}")
        super().__init__(
            params,
            dict(
                lr=lr,
                eps=eps,
                rank=rank,
                variant=variant,
                momentum=momentum,
                betas=tuple(betas),
                adam_eps=adam_eps,
                weight_decay=weight_decay,
            ),
            engine=engine,
            seed=seed,
        )

    def _uv(self, pid: int, like: torch.Tensor):
        r = self._shared("rank")  # a CP rank, not capped by min(m, n)
        base = self.param_groups[0]["seed"]
        return (
            gaussian(factor_seed(base, pid, 0), (like.shape[0], r), like),
            gaussian(factor_seed(base, pid, 1), (like.shape[1], r), like),
            r,
        )

    def _tau(self, step: int, pid: int, like: torch.Tensor) -> torch.Tensor:
        r = self._shared("rank")
        return gaussian(factor_seed(self.param_groups[0]["seed"], pid, 2, step), (r,), like)

    def _direction(self, step: int, coefficients) -> LowRankDirection:
        """Z = U diag(c) Vᵀ with c = coefficients(pid, like) (τ, or the τ-space update); no 1/√r."""

        def factors(pid, like):
            u, v, _ = self._uv(pid, like)
            return u * coefficients(pid, like), v

        return LowRankDirection(self.direction(step).seed, factors=factors)

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:  # type: ignore[override]  # a ZO step needs its closure (optional in torch.optim)
        step = self._advance()
        perturbation = self._direction(step, lambda pid, like: self._tau(step, pid, like))
        variant = self._shared("variant")
        if variant == "plain":
            return self._spsa_sgd(closure, perturbation)
        kappa, loss_plus, loss_minus = self._two_sided(closure, perturbation, self._shared("eps"))
        self.engine.restore(self._all_params)
        self._record(projected_grad=kappa, loss_plus=loss_plus, loss_minus=loss_minus)
        if not math.isfinite(kappa):
            return torch.tensor((loss_plus + loss_minus) / 2)
        by_pid = dict(self._all_params)

        def tau_update(pid, like):  # the moment-based coefficient in τ space (r numbers)
            state = self.state[by_pid[pid]]
            grad = kappa * self._tau(step, pid, like)
            if variant == "momentum":
                state["tau_momentum"] = self._shared("momentum") * state.get("tau_momentum", 0.0) + grad
                return state["tau_momentum"]
            (beta1, beta2), delta = self._shared("betas"), self._shared("adam_eps")
            state["tau_exp_avg"] = beta1 * state.get("tau_exp_avg", 0.0) + (1 - beta1) * grad
            state["tau_exp_avg_sq"] = beta2 * state.get("tau_exp_avg_sq", 0.0) + (1 - beta2) * grad * grad
            m_hat = state["tau_exp_avg"] / (1 - beta1**step)
            v_hat = state["tau_exp_avg_sq"] / (1 - beta2**step)
            return m_hat / (v_hat.sqrt() + delta)

        update = self._direction(step, tau_update)
        for group, params in zip(self.param_groups, self._group_params):
            lr = group["lr"]
            matrices = [(pid, p) for pid, p in params if p.ndim == 2]
            others = [(pid, p) for pid, p in params if p.ndim != 2]
            self.engine.update(matrices, update, coeff=-lr, decay=lr * group["weight_decay"])
            # non-matrix parameters: MeZO's step with this step's Gaussian z
            self.engine.update(others, perturbation, coeff=-lr * kappa, decay=lr * group["weight_decay"])
        return torch.tensor((loss_plus + loss_minus) / 2)
